"""The separately installed example plugin is discovered through installed metadata and works end to end."""

from importlib.metadata import distribution

import torch

from omniopd_verl import registry
from omniopd_verl.config import OmniOPDConfig
from omniopd_verl.core import check_anchors


def test_example_plugin_is_installed_as_its_own_distribution():
    dist = distribution("omniopd-example-plugin")
    groups = {(ep.group, ep.name) for ep in dist.entry_points}
    assert ("omniopd_verl.similarity", "jaccard") in groups
    assert ("omniopd_verl.schedulers", "tail_first") in groups


def test_example_plugins_load_and_compute():
    assert "jaccard" in registry.available("similarity")
    jac = registry.create("similarity", "jaccard")
    # {a, b, c} vs {b, c, d}: 2 / 4
    assert jac.score([("a b c", "B c d"), ("", "")]) == [0.5, 1.0]
    sched = registry.create("schedulers", "tail_first")
    anchors = sched.select(torch.zeros(23), 23, 2, 5, seed=0)
    assert anchors == [13, 18]
    check_anchors(anchors, 23, 5, 2)


def test_config_accepts_third_party_names():
    c = OmniOPDConfig(similarity="jaccard", scheduler="tail_first")
    assert (c.similarity, c.scheduler) == ("jaccard", "tail_first")
