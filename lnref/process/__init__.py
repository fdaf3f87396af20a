"""Settings of the process that runs lnref: its BLAS threads, its allocator, its workers.

The lowest floor: nothing here imports the rest of lnref. The library never changes these
on its own; code that owns its process (the ``lnref`` command, the benchmarks, the gradient
checker's forked workers) calls them.
"""
