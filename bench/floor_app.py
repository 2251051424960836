"""The floor of ``bench/read_api.py``: a bare Starlette app serving fixed JSON bodies.

``BENCH_ONE`` and ``BENCH_LIST`` name files holding the bodies to serve at ``/one`` and ``/list``
(the gateway's own responses, so sizes match byte for byte).
"""

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

ONE = Path(os.environ["BENCH_ONE"]).read_bytes()
LIST = Path(os.environ["BENCH_LIST"]).read_bytes()


async def one(request):
    return Response(ONE, media_type="application/json")


async def many(request):
    return Response(LIST, media_type="application/json")


app = Starlette(routes=[Route("/one", one), Route("/list", many)])
