"""Per-shot params (``<param>_by_shots``): CoOp's epoch schedule, resolved per draw."""
from __future__ import annotations

import pytest
import yaml

from pipeline.heads import make_head
from pipeline.params import ParamsError
from tests.conftest import REPO


def test_by_shots_overrides_the_param_for_listed_shots_only():
    params = {"epochs": 200, "epochs_by_shots": {1: 50, 2: 100, "4": 100}}
    assert make_head("coop", params, 1).epochs == 50
    assert make_head("coop", params, "2").epochs == 100
    assert make_head("coop", params, 4).epochs == 100
    assert make_head("coop", params, 16).epochs == 200
    assert make_head("coop", params, "all").epochs == 200
    assert make_head("coop", params).epochs == 200  # no draw: the base value
    assert "epochs_by_shots" not in make_head("coop", params, 1).get_params()


def test_by_shots_errors_name_the_key():
    with pytest.raises(ParamsError, match="'heads.coop.lr_max_by_shots': 'lr_max' is not a param"):
        make_head("coop", {"lr_max_by_shots": {1: 0.1}}, 1)
    with pytest.raises(ParamsError, match="'heads.coop.epochs_by_shots' must map shot counts"):
        make_head("coop", {"epochs_by_shots": {"one": 50}}, 1)
    with pytest.raises(ParamsError, match="'heads.coop.epochs_by_shots' must map shot counts"):
        make_head("coop", {"epochs_by_shots": [50, 100]}, 1)


@pytest.mark.parametrize("head", ["coop", "clip_adapter"])
def test_default_schedule_is_coops_scripts(head):
    """COOP.md: ep50 at 1 shot, ep100 at 2 and 4 shots, the 200-epoch config at 8 and 16."""
    block = yaml.safe_load((REPO / "params.yaml").read_text())["heads"][head]
    assert {s: make_head(head, block, s).epochs for s in (1, 2, 4, 8, 16)} == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


def test_by_task_then_by_shots():
    params = {"epochs": 200, "epochs_by_task": {"glare": 30}, "epochs_by_shots": {1: 50},
              "heads_by_task": {"glare": 4}}
    assert make_head("clip_mhadapter", params, 16, "glare").epochs == 30
    assert make_head("clip_mhadapter", params, 16, "glare").heads == 4
    assert make_head("clip_mhadapter", params, 1, "glare").epochs == 50  # shots applied after the task
    assert make_head("clip_mhadapter", params, 16, "weather").heads == 8
    with pytest.raises(ParamsError, match="'heads.clip_mhadapter.blend_by_task' must map tasks"):
        make_head("clip_mhadapter", {"blend_by_task": [0.8]}, 1, "glare")


def test_final_key_switches_the_final_fit_and_is_not_a_constructor_param(tmp_path):
    from pipeline.heads.base import final_fit_wanted
    from pipeline.predict import model_file

    assert final_fit_wanted("coop", {"epochs": 5}) is True
    assert final_fit_wanted("coop", {"final": False}) is False
    assert make_head("coop", {"final": False, "epochs": 5}).epochs == 5
    with pytest.raises(ParamsError, match="'heads.coop.final' must be true or false"):
        final_fit_wanted("coop", {"final": "no"})
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="no final fit"):
        model_file(tmp_path, "weather")
    assert model_file(tmp_path, "weather", 16, 1) == tmp_path / "models" / "weather-16-1.json"
