"""fakesnow's server, with two changes that make it behave as Snowflake does where cdc relies
on it. Run by src/destination/snowflake/local.rs with the virtual environment of scripts/fakesnow-install:

    python fakesnow-server.py HOST PORT

(its databases are in memory, as fakesnow's own server mode keeps them)

1. The emulator's CREATE TABLE records an absent table comment in its global catalog, which
   DuckDB refuses inside a transaction that writes elsewhere, so a MERGE (which fakesnow runs
   through a temporary table) could not run inside BEGIN ... COMMIT as it does on Snowflake: a
   comment that is not there is no longer recorded.
2. A session of a killed client keeps its open transaction forever here (Snowflake aborts it
   when cdc's next session calls SYSTEM$ABORT_SESSION on it, which the emulator lacks): a login
   whose QUERY_TAG names a pipeline's writer closes the earlier session with that tag, rolling
   its transaction back.
"""
import gzip
import json
import sys

import importlib

import fakesnow.transforms as transforms
import uvicorn
from starlette.routing import Route

server = importlib.import_module("fakesnow.server")

_extract = transforms.extract_comment_on_table


def extract_comment_on_table(expression):
    new = _extract(expression)
    comment = new.args.get("table_comment")
    if comment and comment[1] is None:
        del new.args["table_comment"]
    return new


transforms.extract_comment_on_table = extract_comment_on_table

_writers: dict[str, str] = {}


async def login_request(request):
    body = await request.body()
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    tag = json.loads(body)["data"].get("SESSION_PARAMETERS", {}).get("QUERY_TAG", "")
    response = await server.login_request(request)
    if tag.startswith("cdc writer "):
        token = json.loads(response.body)["data"]["token"]
        if (old := _writers.pop(tag, None)) and (conn := server.sessions.pop(old, None)):
            try:
                conn.rollback()
            except Exception:
                pass
            conn.close()
        _writers[tag] = token
    return response


for i, route in enumerate(server.app.router.routes):
    if getattr(route, "path", "") == "/session/v1/login-request":
        server.app.router.routes[i] = Route("/session/v1/login-request", login_request, methods=["POST"])

uvicorn.run(server.app, host=sys.argv[1], port=int(sys.argv[2]), log_level="info")
