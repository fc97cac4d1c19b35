"""`crnet episodes` and crnet.data.protocol: the listed episodes are the ones crnet eval
scores with the same options."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from crnet.cli import main
from crnet.data.episodes import DatasetError, load_rgb
from crnet.data.evaluation import episode_source
from crnet.data.protocol import episode_protocol


def _names(root: Path) -> dict[bytes, str]:
    return {hashlib.sha1(load_rgb(path).tobytes()).digest(): path.stem
            for path in (root / "JPEGImages").glob("*.jpg")}


@pytest.mark.parametrize("sampler", ["uniform", "hsnet", "pfenet"])
def test_listed_episodes_are_the_evaluated_ones(voc_root: Path, tmp_path: Path,
                                                sampler: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "episodes.json"
    code = main(["episodes", "--dataset", "pascal-5i", "--data-root", str(voc_root),
                 "--sampler", sampler, "--shots", "2", "--episodes", "25", "--seed", "4",
                 "--json", str(out)])
    assert code == 0
    assert f"wrote {out}: 25 episodes, 2-shot, fold 0, sampler {sampler}" in \
        capsys.readouterr().out
    record = json.loads(out.read_text())
    assert (record["sampler"], record["seed"], record["shots"], record["episodes"]) == \
        (sampler, 4, 2, 25)
    # what crnet eval loads for the same options (data.evaluation.episode_source)
    names = _names(voc_root)
    source = episode_source("pascal-5i", 0, 4, voc_root, sampler=sampler)
    loaded = [{"query": names[hashlib.sha1(e.query_image.tobytes()).digest()],
               "class": e.class_id,
               "supports": [names[hashlib.sha1(s.tobytes()).digest()]
                            for s in e.support_images]}
              for e in source.episodes(25, shots=2)]
    listed = [{k: entry[k] for k in ("query", "class", "supports")}
              for entry in record["protocol"]]
    assert listed == loaded


def test_printed_without_json(voc_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["episodes", "--dataset", "pascal-5i", "--data-root", str(voc_root),
                 "--episodes", "3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["sampler"] == "uniform" and len(record["protocol"]) == 3
    assert record["protocol"][0]["class_name"] in ("aeroplane", "bicycle", "bird", "boat",
                                                   "bottle")


def test_pfenet_list_ends_with_its_passes(voc_root: Path) -> None:
    record = episode_protocol(voc_root, sampler="pfenet", seed=321, episodes=5001)
    assert record["episodes_requested"] == 5001
    assert record["episodes"] == len(record["protocol"]) == 20 * 30  # 30 query images


def test_only_pascal_and_positive_counts(voc_root: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["episodes", "--data-root", str(voc_root)]) != 0
    assert "takes --dataset pascal-5i" in capsys.readouterr().err
    assert main(["episodes", "--dataset", "pascal-5i", "--data-root", str(voc_root),
                 "--episodes", "0"]) != 0
    assert "--episodes must be >= 1" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="dataset must be pascal-5i"):
        episode_protocol(voc_root, dataset="folder")


def test_sampler_help_names_each_papers_run() -> None:
    from crnet.data.evaluation import SAMPLER_HELP, SAMPLER_PROTOCOLS

    for sampler, run in SAMPLER_PROTOCOLS.items():
        assert f"--episodes {run['episodes']} --seed {run['seed']}" in SAMPLER_HELP, sampler
    assert "workers=0" in SAMPLER_HELP and "2048-pixel rule" in SAMPLER_HELP
