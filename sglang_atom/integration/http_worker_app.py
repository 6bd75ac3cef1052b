"""The app each HTTP worker of `--tokenizer-worker-num N` (N > 1) imports under --backend atom.

SGLang 0.5.17 starts those workers with uvicorn's `workers=N`: fresh interpreters that import
its app by name and load no plugins, so the alias the launcher added to its own copy of the app
is not there. The launcher points that import at this module (routing_compat), which is SGLang's
app with the alias added at import, before the worker serves it.
"""

from sglang.srt.entrypoints.http_server import app

from .routing_compat import DataParallelRankAlias

app.add_middleware(DataParallelRankAlias)
