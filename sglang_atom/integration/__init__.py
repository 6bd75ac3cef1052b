"""The only package that touches SGLang internals (SGLang 0.5.17).

`symbols` lists every internal it relies on and checks them at startup; `cli` hooks argument
parsing; `runtime` installs and verifies the hooks that change serving; `admission` is the
scheduler glue. A newer SGLang needs changes here only.
"""
