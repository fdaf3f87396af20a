// MathJax 3, served from this site (assets/mathjax/, copied from an installed package at build
// time): math is written $...$ and $$...$$ in the pages, wrapped by pymdownx.arithmatex.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  loader: {
    paths: { mathjax: new URL("../assets/mathjax", document.currentScript.src).href },
  },
};

// Material for MkDocs swaps pages without a reload when instant navigation is on; typeset each.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax.typesetPromise) {
      MathJax.typesetClear();
      MathJax.typesetPromise();
    }
  });
}
