"""Loads the queue's Lua scripts (`lua/verbNoun-<numKeys>.lua`) and checks every call's key count.
A line `--#include _lib` in a script is replaced by the body of `lua/_lib.lua` (shared code).

Scripts run by EVALSHA in plain (non-transactional) pipelines; after a server restart wipes the
script cache, `Scripts.ensure_loaded` loads them again.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

LUA_DIR = Path(__file__).with_name("lua")
# Strict mode (tests on a cluster-mode node): the `#!lua` shebang makes Redis 7 refuse cross-slot
# access, and the prelude refuses any key not passed in KEYS, as Dragonfly does by default.
STRICT_PRELUDE = """#!lua
local redis = setmetatable({call = function(cmd, key, ...)
  if key == nil then return redis.call(cmd) end
  if string.upper(cmd) ~= 'TIME' then
    local ok = false
    for _, k in ipairs(KEYS) do if k == key then ok = true break end end
    if not ok then error('script tried accessing undeclared key ' .. tostring(key)) end
  end
  return redis.call(cmd, key, ...)
end}, {__index = redis})
"""
_NAME = re.compile(r"^(?P<name>[a-z][A-Za-z]+)-(?P<keys>\d+)\.lua$")
_INCLUDE = re.compile(r"^--#include (?P<lib>_[a-z]+)$", re.M)  # lua/_<lib>.lua: shared code


@dataclass(frozen=True)
class Script:
    name: str
    num_keys: int  # fixed keys; scripts documenting `KEYS[n+i]` take more, never fewer
    variadic: bool
    source: str
    sha: str

    def args(self, keys: list[str], argv: list) -> list:
        """EVALSHA arguments after the sha, checking the key count against the header."""
        if len(keys) < self.num_keys or (not self.variadic and len(keys) != self.num_keys):
            raise ValueError(f"{self.name} takes {self.num_keys} keys, got {len(keys)}")
        return [self.sha, len(keys), *keys, *argv]


def _load(path: Path, strict: bool = False) -> Script:
    m = _NAME.match(path.name)
    if not m:
        raise ValueError(f"lua script {path.name} is not named verbNoun-<numKeys>.lua")
    source = _INCLUDE.sub(lambda m: (LUA_DIR / f"{m['lib']}.lua").read_text().split("]]", 1)[1].strip(),
                          path.read_text())
    header = source.split("]]", 1)[0]
    num_keys = int(m["keys"])
    for i in range(1, num_keys + 1):
        if f"KEYS[{i}]" not in header:
            raise ValueError(f"{path.name}: header does not describe KEYS[{i}]")
    if strict:
        source = STRICT_PRELUDE + source
    return Script(m["name"], num_keys, f"KEYS[{num_keys}+i]" in header, source,
                  hashlib.sha1(source.encode()).hexdigest())


class Scripts:
    def __init__(self, strict: bool = False) -> None:
        self.all = {s.name: s for s in (_load(p, strict) for p in sorted(LUA_DIR.glob("[a-z]*.lua")))}
        self.claim = self.all["claimJobs"]
        self.finish = self.all["finishJobs"]
        self.recover = self.all["recoverJobs"]
        self.upsert = self.all["upsertJobs"]
        self.remove = self.all["removeJobs"]

    async def ensure_loaded(self, redis) -> None:
        present = await redis.script_exists(*(s.sha for s in self.all.values()))
        for script, ok in zip(self.all.values(), present):
            if not ok:
                await redis.script_load(script.source)
