"""README.md's commands run as written.

Every ```bash and ```python block of README.md is extracted, except the two set-up blocks
(marked ``<!-- main-command -->`` and ``<!-- test-command -->``: they install the project
and run this suite). Each shell command runs in a temporary working directory in which
``deploy-out/bundle`` is a small test bundle (a tiny balanced CRNet with fp32, fp16 and int8
variants), the one path the README expects to exist; each Python block runs in a fresh
interpreter there, with the images it names (``support_rgb``, ``support_mask``,
``frame_rgb``, ``frames``) taken from a synthetic-5i episode. Nothing in the README is
adjusted for the test.

Rules, not a list of lines, decide what cannot run here or takes minutes:

* SKIP_RULES: a command that needs what this machine lacks (TensorRT and a GPU, a running
  server, the PASCAL VOC data set) is skipped with the rule's reason;
* SLOW_RULES: a command that takes minutes (deploy, train, the export and quantization of
  the full bundled model, more than 100 evaluation episodes) runs only under ``-m slow``,
  and so does every later command of its block, which may depend on what it wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP_MARKERS = ("<!-- main-command -->", "<!-- test-command -->")
FENCE = re.compile(r"^```(bash|python)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MAX_FAST_EPISODES = 100
FAST_TIMEOUT_S = 300
SLOW_TIMEOUT_S = 1800

SKIP_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"--target tensorrt|--backend tensorrt|backend=\"tensorrt\""),
     "needs TensorRT and an NVIDIA GPU"),
    (re.compile(r"--device cuda"), "needs a CUDA GPU"),
    (re.compile(r"\bcrnet serve\b|\bbench-remote\b|RemoteSegmenter\("),
     "needs a running `crnet serve` (Triton) server"),
    (re.compile(r"VOCdevkit/"),
     "needs PASCAL VOC2012 with SBD's labels on disk (VOCdevkit/)"),
)


def _many_episodes(command: str) -> bool:
    return any(int(count) > MAX_FAST_EPISODES
               for count in re.findall(r"--episodes\s+(\d+)", command))


SLOW_RULES: tuple[tuple[object, str], ...] = (
    (re.compile(r"^crnet (deploy|train)\b"), "deploy and training take minutes"),
    (re.compile(r"^crnet (export|quantize)\b"),
     "exporting and quantizing the full bundled model takes minutes"),
    (_many_episodes, f"more than {MAX_FAST_EPISODES} evaluation episodes"),
)


@dataclass(frozen=True)
class Command:
    """One runnable unit of the README: a shell command or a whole Python block."""

    language: str  # "bash" or "python"
    text: str
    line: int  # README line where it starts
    block: int  # index of its block among the README's runnable blocks
    skip: str | None  # why it cannot run here (SKIP_RULES)
    slow: str | None  # why it runs only under -m slow (SLOW_RULES, itself or earlier)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def _match(rules: tuple[tuple[object, str], ...], text: str) -> str | None:
    for rule, reason in rules:
        hit = rule.search(text) if isinstance(rule, re.Pattern) else rule(text)
        if hit:
            return reason
    return None


def shell_commands(body: str) -> list[tuple[int, str]]:
    """(line offset, command) of each command in a bash block: backslash continuations
    joined, blank and comment-only lines dropped (trailing comments are left to bash)."""
    commands, pending, start = [], "", 0
    for offset, line in enumerate(body.splitlines()):
        if not pending:
            start = offset
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((start, (pending + line).strip()))
        pending = ""
    if pending:
        commands.append((start, pending.strip()))
    return commands


def readme_commands(text: str) -> list[Command]:
    """Every runnable command of a README text, with its skip and slow verdicts."""
    commands: list[Command] = []
    block = 0
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        if before and before[-1].strip() in SETUP_MARKERS:
            continue
        language, body = match.group(1), match.group(2)
        first_line = text.count("\n", 0, match.start(2)) + 1
        units = [(0, body)] if language == "python" else shell_commands(body)
        slow_so_far: str | None = None
        for offset, unit in units:
            slow_so_far = slow_so_far or _match(SLOW_RULES, unit)
            commands.append(Command(language, unit, first_line + offset, block,
                                    _match(SKIP_RULES, unit), slow_so_far))
        block += 1
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))

# The inputs a Python block names; an application brings its own images.
PYTHON_PRELUDE = textwrap.dedent("""\
    from crnet.data.synthetic import Synthetic5i
    _episode = Synthetic5i(0, split="test", seed=0).episode(0, shots=1)
    support_rgb, support_mask = _episode.support_images[0], _episode.support_masks[0]
    frame_rgb = _episode.query_image
    frames = [frame_rgb, _episode.support_images[0], frame_rgb]
    del _episode
    """)


def _params(slow: bool) -> list[object]:
    params = []
    for command in COMMANDS:
        if bool(command.slow) != slow:
            continue
        marks = [pytest.mark.skip(reason=command.skip)] if command.skip else []
        params.append(pytest.param(command, id=command.id, marks=marks))
    return params


@pytest.fixture(scope="module")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with fp32, fp16 and int8 variants, made with the `crnet` command."""
    from crnet.models.checkpoint import save_checkpoint
    from tests.calibration.conftest import balanced_tiny_model

    root = tmp_path_factory.mktemp("readme-bundle")
    checkpoint = save_checkpoint(balanced_tiny_model(), root / "tiny", training={"fold": 0})
    bundle = root / "bundle"
    for arguments in (
        ["export", "--checkpoint", str(checkpoint), "--out", str(bundle), "--episodes", "2"],
        ["quantize", str(bundle), "--precision", "fp16", "--check-episodes", "2"],
        ["quantize", str(bundle), "--precision", "int8", "--calibration-method", "minmax",
         "--calibration-episodes", "4", "--no-sensitivity"],
    ):
        _run(["crnet", *arguments, "--no-progress"], root, FAST_TIMEOUT_S)
    return bundle


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory, test_bundle: Path) -> dict[int, Path]:
    """One working directory per README block, made on first use; commands of a block run
    in order in the same directory, so a later command finds what an earlier one wrote."""

    class Workdirs(dict):
        def __missing__(self, block: int) -> Path:
            path = tmp_path_factory.mktemp(f"readme-block{block}")
            (path / "deploy-out").mkdir()
            (path / "deploy-out" / "bundle").symlink_to(test_bundle, target_is_directory=True)
            self[block] = path
            return path

    return Workdirs()


def _environment() -> dict[str, str]:
    """This interpreter's `python` and `crnet` first on PATH; no accelerator is looked for."""
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                           environment.get("PATH", "")])
    environment.setdefault("CUDA_VISIBLE_DEVICES", "")
    return environment


def _run(arguments: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(arguments, cwd=cwd, env=_environment(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(arguments)!r} exited {result.returncode}\n--- stdout\n"
        f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


def _run_command(command: Command, cwd: Path, timeout: float) -> None:
    if command.language == "python":
        _run([sys.executable, "-c", PYTHON_PRELUDE + command.text], cwd, timeout)
    else:
        _run(["bash", "-euo", "pipefail", "-c", command.text], cwd, timeout)


@pytest.mark.parametrize("command", _params(slow=False))
def test_readme_command(command: Command, workdirs: dict[int, Path]) -> None:
    _run_command(command, workdirs[command.block], FAST_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.parametrize("command", _params(slow=True))
def test_readme_slow_command(command: Command, workdirs: dict[int, Path]) -> None:
    _run_command(command, workdirs[command.block], SLOW_TIMEOUT_S)


# -- the extraction and the rules, on a README of known content ------------------------------

SAMPLE = textwrap.dedent("""\
    <!-- main-command -->
    ```bash
    pip install . && crnet deploy --out deploy-out
    ```

    ```bash
    # a comment line
    crnet lint deploy-out/bundle   # trailing comment
    crnet build deploy-out/bundle \\
        --target tensorrt
    crnet eval --episodes 1000
    crnet info
    ```

    ```python
    seg = RemoteSegmenter("localhost:8000")
    ```
    """)


def test_extraction_skips_setup_blocks_and_joins_continuations() -> None:
    commands = readme_commands(SAMPLE)
    assert [(c.language, c.text, c.line) for c in commands] == [
        ("bash", "crnet lint deploy-out/bundle   # trailing comment", 8),
        ("bash", "crnet build deploy-out/bundle      --target tensorrt", 9),
        ("bash", "crnet eval --episodes 1000", 11),
        ("bash", "crnet info", 12),
        ("python", 'seg = RemoteSegmenter("localhost:8000")\n', 16),
    ]


def test_rules_skip_and_slow_down_by_content() -> None:
    lint, build, evaluate, info, remote = readme_commands(SAMPLE)
    assert (lint.skip, lint.slow) == (None, None)
    assert build.skip == "needs TensorRT and an NVIDIA GPU"
    assert evaluate.slow and evaluate.skip is None
    assert info.slow, "a command after a slow one in its block depends on it: slow too"
    assert remote.skip and "server" in remote.skip
    (train,) = readme_commands("```bash\ncrnet train --device cuda --data-root VOCdevkit/x\n```\n")
    assert (train.skip, train.slow) == ("needs a CUDA GPU", "deploy and training take minutes")


def test_the_readme_has_fast_commands_and_every_setup_block_is_left_out() -> None:
    fast = [c for c in COMMANDS if not c.slow and not c.skip]
    assert any(c.language == "python" for c in fast), "the app quickstart must run"
    assert any(c.language == "bash" for c in fast)
    assert not any("pip install" in c.text for c in COMMANDS)
    assert README.read_text(encoding="utf-8").count("```bash") + \
        README.read_text(encoding="utf-8").count("```python") == \
        len({c.block for c in COMMANDS}) + len(SETUP_MARKERS)


def test_a_failing_command_fails_the_test(tmp_path: Path) -> None:
    command = Command("bash", "crnet eval --bundle no-such-bundle", 1, 0, None, None)
    with pytest.raises(AssertionError, match="exited 1"):
        _run_command(command, tmp_path, FAST_TIMEOUT_S)
