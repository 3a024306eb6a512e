"""How the shell speaks: the toolkit's log lines at the level --quiet/--verbose choose, progress bars, download bars."""

import logging
import os
import subprocess
import sys

import huggingface_hub.utils
import pytest
import transformers.utils.logging

from prism.cli import shell
from prism.cli.command import Command
from prism.cli.logs import TOOLKIT_LOGGERS
from prism.cli.shell import main

LOGGER = "interventions.study.runner"  # any toolkit module's logger


@pytest.fixture()
def spoken(monkeypatch):
    """``prism personas`` replaced by a command that logs a line at each level, prints a result and notes what the
    shell passed it (``progress``) and how the download and loading bars were set while it ran."""
    seen = {}

    def run(args):
        logger = logging.getLogger(LOGGER)
        logger.debug("a debugging line")
        logger.info("an info line")
        logger.warning("a warning line")
        print("the result")
        seen.update(
            progress=args.progress,
            downloads=not huggingface_hub.utils.are_progress_bars_disabled(),
            loading=transformers.utils.logging.is_progress_bar_enabled(),
        )

    monkeypatch.setattr(shell, "load_command", lambda name: Command(name, lambda parser: None, run))
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    return seen


@pytest.mark.parametrize(
    "argv, lines",
    [
        (["personas"], ["an info line", "a warning line"]),
        (["personas", "--quiet"], ["a warning line"]),
        (["-q", "personas"], ["a warning line"]),
        (
            ["personas", "--verbose"],
            [f"DEBUG {LOGGER}: a debugging line", f"INFO {LOGGER}: an info line", f"WARNING {LOGGER}: a warning line"],
        ),
        (
            ["--verbose", "personas"],
            [f"DEBUG {LOGGER}: a debugging line", f"INFO {LOGGER}: an info line", f"WARNING {LOGGER}: a warning line"],
        ),
    ],
)
def test_the_level_follows_quiet_and_verbose_and_results_are_always_printed(argv, lines, spoken, capsys):
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert printed.out == "the result\n"
    said = [line for line in printed.err.splitlines() if "prism.cli.shell" not in line]  # --verbose: the command line
    assert said == lines
    assert spoken["progress"] is ("-q" not in argv and "--quiet" not in argv)


def test_verbose_says_the_command_line(spoken, capsys):
    assert main(["--verbose", "personas"]) == 0
    assert "DEBUG prism.cli.shell: running prism --verbose personas" in capsys.readouterr().err


def test_quiet_and_verbose_together_are_refused(spoken, capsys):
    for argv in (["personas", "--quiet", "--verbose"], ["--quiet", "personas", "--verbose"]):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
        assert "--quiet" in capsys.readouterr().err.splitlines()[-1] and not spoken


@pytest.fixture()
def bars_on():
    """Download and loading bars on, as a fresh process has them (the tests' conftest turns them off)."""
    transformers.utils.logging.enable_progress_bar()  # the hub's bars too
    yield
    transformers.utils.logging.disable_progress_bar()


def test_downloads_show_progress_unless_quiet_and_everything_comes_back_after(spoken, bars_on):
    assert main(["personas"]) == 0
    assert spoken["downloads"] and not spoken["loading"] and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert main(["personas", "--quiet"]) == 0
    assert not spoken["downloads"] and not spoken["loading"]
    assert (
        not huggingface_hub.utils.are_progress_bars_disabled() and transformers.utils.logging.is_progress_bar_enabled()
    )


def test_the_shell_leaves_no_handler_or_level_behind(spoken):
    assert main(["personas", "--verbose"]) == 0
    for name in TOOLKIT_LOGGERS:
        assert logging.getLogger(name).handlers == [] and logging.getLogger(name).level == logging.NOTSET


def test_the_library_alone_prints_warnings_but_not_info_lines():
    code = (
        "import logging, interventions.study.runner as runner, prism.train, probes.study, prism.cli.demo; "
        "runner.log.info('an info line'); runner.log.warning('a warning line'); "
        f"assert all(not logging.getLogger(name).handlers for name in {TOOLKIT_LOGGERS!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.splitlines() == ["a warning line"] and done.stdout == ""
