"""The only package that touches SGLang internals (SGLang 0.5.17).

`symbols` checks at startup that every internal listed here exists (its own lists, and those
the model-side modules keep beside their code); `cli` hooks argument parsing; `runtime` installs
and verifies the hooks that change serving; `admission` is the scheduler glue. A newer SGLang
needs changes here only.
"""
