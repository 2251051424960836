"""The floors of ``bench/read_api.py`` and ``bench/webhook_ingest.py``: a bare Starlette app.

- ``GET /one``, ``GET /list``: fixed JSON bodies read from the files ``BENCH_ONE`` and
  ``BENCH_LIST`` name (the gateway's own responses, so sizes match byte for byte); empty when
  those are not set.
- ``POST /hooks/{connection_id}``: reads the body, parses it with the gateway's JSON parser
  (:func:`gateway.jsonutil.loads`) and answers a fixed ``200`` of the gateway's shape: what any
  webhook receiver must do at least, with nothing stored.
"""

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from gateway import jsonutil

ONE = Path(os.environ["BENCH_ONE"]).read_bytes() if os.environ.get("BENCH_ONE") else b"{}"
LIST = Path(os.environ["BENCH_LIST"]).read_bytes() if os.environ.get("BENCH_LIST") else b"{}"
RECEIVED = b'{"received":true,"id":"inb_0000000000000000000000","duplicate":false}'


async def one(request):
    return Response(ONE, media_type="application/json")


async def many(request):
    return Response(LIST, media_type="application/json")


async def hook(request):
    jsonutil.loads(await request.body())
    return Response(RECEIVED, media_type="application/json")


app = Starlette(routes=[Route("/one", one), Route("/list", many), Route("/hooks/{connection_id}", hook, methods=["POST"])])
