"""The ``tldr-index`` click group: keeps the command line, and turns Ctrl-C into exit code 130
with the stage it stopped and the command that continues (instead of click's ``Aborted!``)."""

from __future__ import annotations

import json
import shlex
import sys

import click

from ..version import __version__

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C
# how each command continues after Ctrl-C: "resume" (same command + --resume), "rerun" (the same
# command picks up its own state), or nothing to continue (the command wrote nothing)
CONTINUE = {"shrink": "resume", "reindex": "rerun", "sweep": "rerun"}
JSON_STATUS_COMMANDS = ("reindex", "rollback")


def program_name(ctx: click.Context) -> str:
    """How the user ran the program (``tldr-index`` or ``python -m tldr_index``)."""
    name = ctx.find_root().info_name or ""
    return name if name in ("tldr-index", "python -m tldr_index") else "tldr-index"


def interrupted_message(command: str, argv: list[str], exc: KeyboardInterrupt,
                        program: str = "tldr-index") -> list[str]:
    """The lines printed when Ctrl-C stops ``command`` run as ``program argv...``: where it
    stopped, and the exact command that continues (or that nothing was kept)."""
    stage = getattr(exc, "stage", None)
    where = f"during stage '{stage}' of {command}" if stage else f"during {command}"
    lines = [f"Interrupted {where} (Ctrl-C)."]
    how = CONTINUE.get(command)
    work = getattr(exc, "work_dir", None)
    if how == "resume":
        again = list(argv) if "--resume" in argv else [*argv, "--resume"]
        lines.append((f"Finished stages are checkpointed in {work}; resume" if work else
                      "Resume") + " with:")
        lines.append(f"  {program} {shlex.join(again)}")
    elif how == "rerun":
        lines.append("Run the same command again to continue from its saved state:")
        lines.append(f"  {program} {shlex.join(argv)}")
    else:
        lines.append("Nothing to resume: run the command again to start over.")
    return lines


class Group(click.Group):
    """The ``tldr-index`` group: keeps the command line, and turns Ctrl-C into exit code 130
    with the stage and the resume command instead of click's ``Aborted!`` (exit 1)."""

    def make_context(self, info_name, args, parent=None, **extra):
        ctx = super().make_context(info_name, list(args), parent=parent, **extra)
        ctx.meta["tldr_index.argv"] = list(args)
        return ctx

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            argv = ctx.meta.get("tldr_index.argv", [])
            command = next((a for a in argv if a in self.commands), ctx.invoked_subcommand or "")
            lines = interrupted_message(command, argv, exc, program_name(ctx))
            if command in JSON_STATUS_COMMANDS:  # they promise one JSON line on stdout
                click.echo(json.dumps({"status": "interrupted", "error": lines[0],
                                       "exit_code": EXIT_INTERRUPTED}, sort_keys=True))
            click.echo("\n" + "\n".join(lines), err=True)
            sys.stderr.flush()
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="tldr-index")
def main() -> None:
    """Shrink embedding collections (LanceDB / Lance, Parquet, Qdrant) into compact collections:
    a learned linear map to fewer dimensions plus PQ codes, with the model stored beside them.

    \b
    Start with:  tldr-index demo
    """
