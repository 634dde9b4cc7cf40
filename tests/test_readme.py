"""Every ```bash and ```python block of README.md and docs/*.md, run for real.

Each block runs in its own workspace (a fresh copy of one template directory built from the
shipped sample, ``tldr_index/data/sample.npz``): ``./lancedb`` and ``./tldr-data`` with a ``docs``
table of the first ``N_ROWS`` sample rows, the same rows as ``data/*.parquet`` and
``data/docs.lance``, an embedded Qdrant store ``./qdrant`` with a ``docs`` collection,
``embeddings.npy``, ``q.npy`` (the 300 held-out sample rows), ``job.toml`` and a copy of
``examples/nightly/job.toml``. Compact targets that a block only *uses* (``docs_tldr64`` for
``eval``, ``reindex``, ``open``) are built once with the README's own ``shrink`` command and
copied in (``NEEDS``).

Only what cannot run as written is substituted (``SUBSTITUTE``, ``command_variants``): server and
absolute paths (``qdrant://localhost:6333``, ``/data``, ``/shared``) become paths in the
workspace, ``[--opt a|b]`` optional arguments are run with the first alternative, ``make demo``
skips its ``install`` step (already installed), ``make test`` is dry-run (it would recurse into
this suite). Names that a Python snippet leaves to the reader (``vectors``, ``ids``, ``src``...)
are defined before it runs (``PRELUDES``). A command that another block already ran on the same
fixtures passes without running twice, also when another pytest-xdist worker ran it (each worker
publishes a block's commands once the whole block passed); a command that is one of the ``BUILD``
commands gets the target that command built (a copy, the command ran once on a copy of the same
fixtures), and ``make demo``, whose recipe is checked by a dry run to be ``python -m
tldr_index.cli demo``, counts as ``tldr-index demo`` (the same command) and the other way round.
The template and the ``BUILD`` targets are made once per session and shared by the workers.
``NOT_RUN`` lists what is never run, with the reason.

A plain ``tldr-index ...`` line (words only: no quotes, variables, redirections, no glob that
matches a file) runs exactly as bash would exec it, the installed console script with that argv,
but as a forked child of one pre-imported interpreter (``tests/_forkrun.py``: its own process,
cwd, environment, output and exit status, without the ~5 CPU s of start-up and imports each
time); anything else, and ``make``, runs through ``bash -c``.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _forkrun import run_python

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
N_ROWS = 1000  # rows of the fixture tables (the demo builds its own 5,700-row table)
BLOCK_RE = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)

# Commands never run, each with the reason (matched against the start of a command).
NOT_RUN = {
    "pip install": "installs packages; the test environment is installed by `make install`",
}
# Exit codes a command documents as outcomes (README: reindex 0 updated, 3 nothing to do, 4 refitted).
# sweep --target-recall: 6 when no candidate reaches the target (printed with what would help).
OK_CODES = {"tldr-index reindex": {0, 3, 4}, "tldr-index sweep": {0, 6}}
# Literal substitutions: what a clone's test cannot reach (a Qdrant server, absolute paths).
SUBSTITUTE = [
    ("qdrant://localhost:6333/docs", "qdrant+path://{ws}/qdrant/docs"),
    ("lance:///data/docs.lance", "lance://{ws}/data/docs.lance"),
    ("parquet:///shared/docs_small/", "parquet://{ws}/shared/docs_small/"),
]
# Blocks that fail today: (file, text in the block) -> reason. strict: flips when fixed.
XFAIL: dict[tuple[str, str], str] = {}
# Blocks that take more than a few seconds.
SLOW = ["make demo", "tldr-index demo", "tldr-index eval", "--engine ray", "engine=\"ray\"",
        "tldr-index shrink", "tldr-index reindex", "compact.add(", "model.fit(X)"]
# Compact targets a block uses but does not create: built once by these commands, copied in.
BUILD = {
    "lancedb/docs_tldr64.lance": "tldr-index shrink --db ./lancedb --collection docs --dim 64",
    "tldr-data/docs_tldr64.lance": "tldr-index shrink --collection docs --dim 64",
    "out": "tldr-index shrink --source parquet://data/*.parquet --target parquet://out/ --dim 64",
    "qdrant": "tldr-index shrink --source qdrant+path://{ws}/qdrant/docs --dim 64",
}
NEEDS = {
    ("README.md", "tldr-index eval"): ["lancedb/docs_tldr64.lance"],
    ("README.md", "compact.add(ids, vectors"): ["tldr-data/docs_tldr64.lance"],
    ("README.md", "tldr-index reindex --db"): ["lancedb/docs_tldr64.lance"],
    ("README.md", "open_table(\"docs_tldr64\")"): ["lancedb/docs_tldr64.lance"],
    ("README.md", "QdrantClient"): ["qdrant"],
    ("docs/reindex.md", "tldr-index reindex"): ["lancedb/docs_tldr64.lance", "out",
                                                "tldr-data/docs_tldr64.lance"],
}
# Blocks whose source gains rows after the shrink (what the nightly reindex is for).
SOURCE_CHANGES = {("README.md", "tldr-index reindex --db"), ("docs/reindex.md", "tldr-index reindex")}
# Python names a snippet leaves to the reader.
PRELUDES = {
    ("README.md", "compact.add(ids, vectors"): """
import numpy as np, pyarrow as pa, ray
from tldr_index.demo import load_sample
_s = load_sample()
vectors = _s["X"][N_ROWS:N_ROWS + 20].astype(np.float32)      # rows the target does not hold
ids = np.arange(10_000_000, 10_000_020)
texts = [str(t) for t in _s["texts"][N_ROWS:N_ROWS + 20]]
queries = _s["X"][5700:5710].astype(np.float32)
from connectors.arrow_utils import numpy_to_fsl
ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
ds = ray.data.from_arrow(pa.table({"id": pa.array(ids), "vector": numpy_to_fsl(vectors)}))
""",
    ("README.md", "engine=\"ray\""): """
from tldr_index.pipeline import shrink
src = "lance://{ws}/data/docs.lance"
tgt = "parquet://{ws}/shared/docs_py/"
""",
    ("README.md", "open_table(\"docs_tldr64\")"): """
import numpy as np
queries = np.load("q.npy")[:10]
""",
    ("README.md", "QdrantClient"): """
import numpy as np
queries = np.load("q.npy")[:10]
""",
}


# --------------------------------------------------------------------------------- the blocks
def blocks() -> list[tuple[str, int, str, str]]:
    """(file, line, language, text) of every fenced bash/python block, in document order."""
    out = []
    for name in DOCS:
        text = (ROOT / name).read_text()
        for m in BLOCK_RE.finditer(text):
            out.append((name, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)))
    return out


def _match(table, name: str, text: str):
    return [v for (f, needle), v in table.items() if f == name and needle in text]


def commands(text: str) -> list[str]:
    """Shell commands of a bash block: continuations joined, comments and blank lines dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+", " ", line))
    return out


def command_variants(cmd: str) -> list[str]:
    """``[--a x|y] [--b z]`` optional groups: run with every group, first alternative each."""
    def first(m: re.Match) -> str:
        return re.sub(r"([^\s|]+)(\|[^\s|]+)+", r"\1", m.group(1))
    return [re.sub(r"\s+", " ", re.sub(r"\[([^\]]*)\]", first, cmd)).strip()]


def _runnable(cmd: str) -> str:
    if cmd.startswith("make demo"):
        return f"make -f {ROOT / 'Makefile'} -o install demo PY={shlex.quote(sys.executable)}"
    if cmd.startswith("make test"):  # would run this suite inside itself: dry run only
        return f"make -f {ROOT / 'Makefile'} -n -o install test PY={shlex.quote(sys.executable)}"
    if shutil.which("tldr-index") is None:
        cmd = re.sub(r"^tldr-index\b", f"{shlex.quote(sys.executable)} -m tldr_index", cmd)
    return cmd


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TLDR_INDEX_DB", "QDRANT_API_KEY", "QDRANT_URL", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("LANCE_LOG", "error")
    return env


def run_command(cmd: str, ws: Path) -> subprocess.CompletedProcess:
    cmd = _substituted(cmd, ws)
    cwd = ws
    if cmd.startswith(("make demo", "tldr-index demo")):
        cwd = ws / "demo"  # the demo builds its own ./tldr-data: an empty directory of its own
        cwd.mkdir(exist_ok=True)
    argv = _plain_cli_argv(cmd, cwd)
    if argv is not None:  # what bash would exec, run as a forked child (no interpreter start-up)
        kind, target, argv = _cli_program(argv)
        return run_python(kind, target, argv, cwd=cwd, env=_env(), timeout=900)
    return subprocess.run(["bash", "-c", _runnable(cmd)], cwd=cwd, env=_env(), text=True,
                          capture_output=True, timeout=900)


def _plain_cli_argv(cmd: str, cwd: Path) -> list[str] | None:
    """The argv bash would run for a plain ``tldr-index ...`` command line: no shell syntax
    beyond words (no quotes, variables, redirections, pipes...), no word a glob would expand
    (a pattern matching nothing stays as written in bash too). ``None`` otherwise."""
    if not cmd.startswith("tldr-index ") or re.search(r"[^\w\s./:,=@*+%-]", cmd):
        return None
    argv = cmd.split()
    if any(glob.glob(w, root_dir=cwd) for w in argv if any(c in w for c in "*?[")):
        return None
    return argv


def _cli_program(argv: list[str]) -> tuple[str, str, list[str]]:
    """``tldr-index`` as bash finds it: the installed console script (its entry point), else
    ``python -m tldr_index`` (what ``_runnable`` runs when none is installed)."""
    from importlib.metadata import entry_points

    script = Path(sys.executable).parent / "tldr-index"
    eps = entry_points(group="console_scripts", name="tldr-index")
    if shutil.which("tldr-index") is not None and script.exists() and eps:
        return "entry", next(iter(eps)).value, [str(script), *argv[1:]]
    return "module", "tldr_index", [sys.executable, *argv[1:]]


# ------------------------------------------------------------------------------------ fixtures
def _make_template(ws: Path) -> None:
    import lance
    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    from connectors.arrow_utils import numpy_to_fsl
    from tldr_index.demo import load_sample

    s = load_sample()
    X = s["X"][:N_ROWS].astype(np.float32)
    table = pa.table({"id": pa.array(np.arange(N_ROWS, dtype=np.int64)),
                      "vector": numpy_to_fsl(X),
                      "text": pa.array(s["texts"][:N_ROWS].tolist()),
                      "label": pa.array(s["label_names"][s["labels"][:N_ROWS]].tolist())})
    for db in ("lancedb", "tldr-data"):
        lancedb.connect(str(ws / db)).create_table("docs", data=table)
    (ws / "data").mkdir()
    pq.write_table(table.slice(0, N_ROWS // 2), ws / "data" / "part-0.parquet")
    pq.write_table(table.slice(N_ROWS // 2), ws / "data" / "part-1.parquet")
    lance.write_dataset(table, str(ws / "data" / "docs.lance"))
    client = QdrantClient(path=str(ws / "qdrant"))
    client.create_collection("docs", vectors_config=qm.VectorParams(size=X.shape[1],
                                                                    distance=qm.Distance.COSINE))
    client.upsert("docs", points=qm.Batch(ids=list(range(N_ROWS)), vectors=X.tolist(),
                                          payloads=[{"text": str(t)} for t in s["texts"][:N_ROWS]]))
    client.close()
    np.save(ws / "embeddings.npy", X)
    np.save(ws / "q.npy", s["X"][5700:].astype(np.float32))
    (ws / "job.toml").write_text('refit = "auto"\ndrift_threshold = 0.7\n')
    (ws / "examples" / "nightly").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "nightly" / "job.toml", ws / "examples" / "nightly")


def _shared_dir(tmp_path_factory) -> Path:
    """A directory every pytest-xdist worker of this session sees (the base temp dir's parent
    under xdist, the base temp dir itself without it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    d = _shared_dir(tmp_path_factory) / "readme-shared"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def template(shared) -> Path:
    from filelock import FileLock

    ws = shared / "template"
    with FileLock(str(shared / "template.lock")):
        if not (ws / ".done").exists():
            shutil.rmtree(ws, ignore_errors=True)
            ws.mkdir()
            _make_template(ws)
            (ws / ".done").touch()
    return ws


@pytest.fixture(scope="session")
def built(template, shared):
    """``get(rel)``: path of the compact target ``rel`` built once per session (``BUILD``) on a
    copy of the template, whichever worker asks first."""
    from filelock import FileLock

    root = shared / "built"

    def get(rel: str) -> Path:
        done = shared / f"built-{rel.replace('/', '_')}.done"
        with FileLock(str(shared / "built.lock")):
            if not root.exists():
                shutil.copytree(template, root, ignore=shutil.ignore_patterns(".done"))
            if not done.exists():
                r = run_command(BUILD[rel].format(ws=root), root)
                assert r.returncode == 0, f"{BUILD[rel]}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
                done.touch()
        return root / rel
    return get


PASSED: set[str] = set()  # commands that passed on these fixtures in this session


def _passed_elsewhere(shared: Path) -> set[str]:
    """The commands of every block another worker (or this one) ran through to the end."""
    out: set[str] = set()
    for f in shared.glob("passed-*.txt"):
        out.update(line for line in f.read_text().splitlines() if line)
    return out


def _publish_passed(shared: Path, key: str, cmds: list[str]) -> None:
    """Tell the other workers that a whole block passed: one file, renamed into place."""
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    tmp = shared / f".passed-{name}.{os.getpid()}"
    tmp.write_text("".join(c + "\n" for c in cmds))
    os.replace(tmp, shared / f"passed-{name}.txt")


DEMO = "tldr-index demo"


def _aliases(variant: str) -> set[str]:
    """Commands that passing ``variant`` also passes: ``make demo`` runs exactly
    ``tldr-index demo`` (``python -m tldr_index.cli demo``; checked here by a dry run)."""
    if variant not in ("make demo", DEMO):
        return {variant}
    dry = subprocess.run(["bash", "-c", _runnable("make demo").replace(" -o install", " -n -o install")],
                         env=_env(), text=True, capture_output=True, timeout=60)
    recipe = [line for line in dry.stdout.splitlines() if line.strip()]
    assert dry.returncode == 0, dry.stderr
    if recipe == [f"{shlex.quote(sys.executable)} -m tldr_index.cli demo"]:
        return {"make demo", DEMO}
    return {variant}


def _built_target(variant: str, ws: Path, ran: list[str]) -> str | None:
    """The ``BUILD`` target that ``variant`` (as run in ``ws``) builds, when no command this block
    ran before touched the store it writes to (so the built copy is what running it would give)."""
    for rel, cmd in BUILD.items():
        if _substituted(variant, ws) != cmd.format(ws=ws):
            continue
        store = {"out": "out/"}.get(rel.split("/")[0], rel.split("/")[0])
        cli = [c for c in ran if c.startswith("tldr-index ") and not c.startswith(DEMO)]
        if not any(store in c or (store == "tldr-data" and "--db" not in c
                                  and "--source" not in c) for c in cli):
            return rel
    return None


def _add_source_rows(ws: Path) -> None:
    """50 new rows in every fixture source: what a nightly reindex has to pick up."""
    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from connectors.arrow_utils import numpy_to_fsl
    from tldr_index.demo import load_sample

    s = load_sample()
    sl = slice(N_ROWS, N_ROWS + 50)
    new = pa.table({"id": pa.array(np.arange(N_ROWS, N_ROWS + 50, dtype=np.int64)),
                    "vector": numpy_to_fsl(s["X"][sl].astype(np.float32)),
                    "text": pa.array(s["texts"][sl].tolist()),
                    "label": pa.array(s["label_names"][s["labels"][sl]].tolist())})
    for db in ("lancedb", "tldr-data"):
        lancedb.connect(str(ws / db)).open_table("docs").add(new)
    pq.write_table(new, ws / "data" / "part-2.parquet")


def _params():
    out = []
    for name, line, lang, text in blocks():
        marks = [pytest.mark.xfail(strict=True, reason=r) for r in _match(XFAIL, name, text)]
        if any(s in text for s in SLOW):
            marks.append(pytest.mark.slow)
        out.append(pytest.param(name, line, lang, text, id=f"{name}:{line}:{lang}", marks=marks))
    return out


@pytest.mark.parametrize("name,line,lang,text", _params())
def test_block_runs(name, line, lang, text, template, built, shared, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(template, ws, ignore=shutil.ignore_patterns(".done"))
    for rels in _match(NEEDS, name, text):
        for rel in rels:
            _copy_in(built(rel), ws / rel)
    if _match({k: 1 for k in SOURCE_CHANGES}, name, text):
        _add_source_rows(ws)
    if lang == "python":
        _run_python(name, text, ws)
        return
    passed = PASSED | _passed_elsewhere(shared)
    ran: list[str] = []
    for cmd in commands(text):
        if any(cmd.startswith(p) for p in NOT_RUN):
            continue
        for variant in command_variants(cmd):
            if variant in passed:
                continue
            rel = _built_target(variant, ws, ran)
            if rel is not None:  # this very command built it, on a copy of the same fixtures
                _copy_in(built(rel), ws / rel)
                PASSED.add(variant)
                continue
            aliases = _aliases(variant)
            if aliases & passed:
                continue
            r = run_command(variant, ws)
            ran.append(variant)
            ok = OK_CODES.get(" ".join(variant.split()[:2]), {0})
            assert r.returncode in ok, (f"{name}:{line}: `{variant}` exited {r.returncode}\n"
                                        f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            if variant.startswith("make test"):
                assert "pytest" in r.stdout
            PASSED.update(aliases)
            passed |= aliases
    _publish_passed(shared, f"{name}:{line}", sorted(PASSED))


def _substituted(cmd: str, ws: Path) -> str:
    for a, b in SUBSTITUTE:
        cmd = cmd.replace(a, b.format(ws=ws))
    return cmd


def _copy_in(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def _run_python(name: str, text: str, ws: Path) -> None:
    """Run the snippet in ``ws`` like a script; a last expression that is a lazy Ray Dataset is
    executed (``materialize``), as a user's next line would."""
    prelude = "".join(_match(PRELUDES, name, text)).replace("{ws}", str(ws))
    tree = ast.parse(text)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    ns: dict = {"__name__": "__readme__", "N_ROWS": N_ROWS}
    old = os.getcwd()
    os.chdir(ws)
    try:
        exec(compile(prelude, "<prelude>", "exec"), ns)
        exec(compile(tree, f"{name}", "exec"), ns)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), name, "eval"), ns)
            if type(value).__module__.startswith("ray.data"):
                value.materialize()
    finally:
        os.chdir(old)
        if "ray" in sys.modules:
            import ray
            if ray.is_initialized():
                ray.shutdown()


def test_every_table_entry_names_a_block():
    """A stale entry (the README changed) must not silently stop a block from being run/marked."""
    bl = blocks()
    for table in (XFAIL, NEEDS, PRELUDES):
        for f, needle in table:
            assert any(n == f and needle in t for n, _, _, t in bl), (f, needle)
    for f, needle in SOURCE_CHANGES:
        assert any(n == f and needle in t for n, _, _, t in bl), (f, needle)
    assert len(bl) >= 10
