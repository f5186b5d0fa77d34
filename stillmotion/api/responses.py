"""The JSON response every route answers with: Starlette's, serialised by orjson.

orjson is a tenth of the cost of ``json.dumps`` per body, which is a visible share of a
poll's or a submit's CPU under load. The output is the same compact UTF-8 JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse as _StarletteJSONResponse


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
