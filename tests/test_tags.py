"""The tag grammar (``ln_diagnostics/tags.py``): builders, the parser as their inverse, the
dashboard regexes against the tags of a real run, natural ordering, clipping, glob matching."""

from __future__ import annotations

import re

import pytest
from pytorch_lightning.demos.boring_classes import BoringModel
from torch import nn

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.tags import (
    GROUPS,
    HEALTH_STATS,
    LAYER_GROUPS,
    STACK_ROLES,
    ParsedTag,
    clip,
    health_tag,
    heatmap_tag,
    layer_name,
    log10_regex,
    log10_tag,
    matches,
    natural_key,
    parse_tag,
    stat_regex,
    tag,
)


@pytest.mark.parametrize(
    ("args", "prefix", "want"),
    [
        (("activations", "std", "encoder.layers.0.fc"), "", "activations/std/encoder.layers.0.fc"),
        (("gradients", "norm", "net.3"), "", "gradients/norm/net.3"),
        (("backprop", "norm", ""), "", "backprop/norm/<root>"),
        (("updates", "ratio", "fc"), "val/", "val/updates/ratio/fc"),
        (("shift", "kl_init", "blocks.10.mlp"), "", "shift/kl_init/blocks.10.mlp"),
        (("ics", "cos", "net.0"), "train/", "train/ics/cos/net.0"),
    ],
)  # fmt: skip
def test_tag_builds_group_stat_layer(args, prefix, want):
    assert tag(*args, prefix=prefix) == want


def test_tag_refuses_a_group_outside_the_grammar():
    for group in ("health", "heatmaps", "activation", ""):
        with pytest.raises(ValueError) as info:
            tag(group, "std", "net.0")
        want = f"group must be one of {', '.join(LAYER_GROUPS)}; got {group!r}"
        assert str(info.value) == want


@pytest.mark.parametrize(
    ("built", "want"),
    [
        (health_tag("grad_norm_total"), "health/grad_norm_total"),
        (health_tag("nonfinite_grads", prefix="val/"), "val/health/nonfinite_grads"),
        (heatmap_tag("backprop_log10_norm"), "heatmaps/backprop_log10_norm"),
        (heatmap_tag("depth_profile", prefix="val/"), "val/heatmaps/depth_profile"),
        (log10_tag("grad_norm_total"), "log10/grad_norm_total"),
        (log10_tag("backprop_norm", "first"), "log10/backprop_norm/first"),
        (log10_tag("update_ratio", "worst", prefix="val/"), "val/log10/update_ratio/worst"),
        (layer_name(""), "<root>"),
        (layer_name("net.0"), "net.0"),
    ],
)
def test_the_other_builders(built, want):
    assert built == want


LAYERS = ["net.0", "encoder.layers.11.self_attn.out_proj", "", "a_b-c", "blocks.0.mlp.fc1"]


@pytest.mark.parametrize("prefix", ["", "val/", "test/"])
def test_parse_tag_inverts_every_builder(prefix):
    for group in LAYER_GROUPS:
        for layer in LAYERS:
            built = tag(group, "some_stat", layer, prefix=prefix)
            assert parse_tag(built) == ParsedTag(group, "some_stat", layer_name(layer)), built
    for stat in HEALTH_STATS:
        assert parse_tag(health_tag(stat, prefix=prefix)) == ParsedTag("health", stat, None)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "loss",
        "activations",
        "activations/std",
        "activations/std/",
        "activations//net.0",
        "health",
        "health/",
        "health/a/b",
        "heatmaps/backprop_log10_norm",
        "log10/grad_norm_total",
        "log10/backprop_norm/first",
        "val/loss",
        "a/b/activations/std/net.0",  # one phase prefix at most
        "hp_metric",
    ],
)
def test_parse_tag_returns_none_outside_the_grammar(value):
    assert parse_tag(value) is None


class Nested(BoringModel):
    """Dotted, nested module names and a layer without parameters, to give the regexes real
    tags of every shape the grammar allows."""

    def __init__(self):
        super().__init__()
        block = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh())
        self.layer = nn.Sequential(nn.Linear(32, 8), block, nn.Linear(8, 2))


def test_regexes_select_exactly_the_tags_of_a_real_run_they_name(make_trainer, events):
    """A default ``LayerDiagnostics`` run, read back with TensorBoard's own reader; each regex
    must select the tags found by splitting the names by hand, and nothing else."""
    run = make_trainer([LayerDiagnostics()], max_steps=2)
    run.fit(Nested())
    tags = set(events(run.logger.log_dir).Tags()["scalars"])

    by_stat: dict[tuple[str, str], set[str]] = {}
    for value in tags:
        parts = value.split("/")
        if parts[0] in LAYER_GROUPS:
            by_stat.setdefault((parts[0], parts[1]), set()).add(value)
    assert ("activations", "std") in by_stat and ("gradients", "norm") in by_stat
    assert "activations/std/layer.1.2" in by_stat[("activations", "std")]
    for (group, stat), want in by_stat.items():
        pattern = re.compile(stat_regex(group, stat))
        assert {t for t in tags if pattern.match(t)} == want, (group, stat)
    for stat in HEALTH_STATS:
        pattern = re.compile(stat_regex("health", stat))
        assert {t for t in tags if pattern.match(t)} == {f"health/{stat}"}

    views = {t for t in tags if t.startswith("log10/")}
    roles = {v.rsplit("/", 1)[0] for v in views if v.rsplit("/", 1)[1] in STACK_ROLES}
    totals = views - {f"{r}/{role}" for r in roles for role in STACK_ROLES}
    assert "log10/backprop_norm" in roles and "log10/grad_norm_total" in totals
    for view in roles:
        pattern = re.compile(log10_regex(view.removeprefix("log10/"), roles=True))
        assert {t for t in tags if pattern.match(t)} == {f"{view}/{r}" for r in STACK_ROLES}
    for view in totals:
        pattern = re.compile(log10_regex(view.removeprefix("log10/"), roles=False))
        assert {t for t in tags if pattern.match(t)} == {view}

    # every other scalar of the run is a grammar tag, and parse_tag rebuilds it
    for value in tags - views:
        parsed = parse_tag(value)
        assert parsed is not None, value
        rebuilt = health_tag(parsed.stat) if parsed.layer is None else tag(*parsed)
        assert rebuilt == value


def test_regexes_escape_and_keep_the_prefix():
    assert re.match(stat_regex("gradients", "norm", prefix="val/"), "val/gradients/norm/net.0")
    assert not re.match(stat_regex("gradients", "norm", prefix="val/"), "gradients/norm/net.0")
    assert not re.match(stat_regex("gradients", "norm"), "gradients/norm/")
    assert not re.match(stat_regex("health", "grad_norm_total"), "health/grad_norm_totalx")
    assert not re.match(stat_regex("gradients", "n.rm"), "gradients/nXrm/net.0")  # dot escaped
    assert re.match(log10_regex("backprop_norm", roles=True, prefix="val/"),
                    "val/log10/backprop_norm/middle")  # fmt: skip
    assert not re.match(log10_regex("backprop_norm", roles=True), "log10/backprop_norm/other")
    assert not re.match(log10_regex("grad_norm_total", roles=False), "log10/grad_norm_total/first")
    with pytest.raises(ValueError) as info:
        stat_regex("heatmaps", "x")
    assert str(info.value) == f"group must be one of {', '.join(GROUPS)}; got 'heatmaps'"


@pytest.mark.parametrize(
    ("names", "want"),
    [
        (["net.10", "net.2", "net.1"], ["net.1", "net.2", "net.10"]),
        (
            ["grads/norm/blocks.10.fc", "grads/norm/blocks.9.fc", "grads/norm/blocks.9"],
            ["grads/norm/blocks.9", "grads/norm/blocks.9.fc", "grads/norm/blocks.10.fc"],
        ),
        (["h10", "h9", "h", "g100"], ["g100", "h", "h9", "h10"]),
        (["a1b2", "a1b10", "a01b3", "ab"], ["a1b2", "a01b3", "a1b10", "ab"]),
        (["7", "10", "x"], ["7", "10", "x"]),
    ],
)  # fmt: skip
def test_natural_key_orders_numbers_by_value(names, want):
    assert sorted(names, key=natural_key) == want


@pytest.mark.parametrize(
    ("text", "width", "kwargs", "want"),
    [
        ("model.bert.encoder.layer.11.attention.self.query", 20, {}, "...ention.self.query"),
        ("net.0", 20, {}, "net.0"),
        ("net.10", 6, {}, "net.10"),  # exactly the width: whole
        ("encoder.layers.0", 10, {}, "...ayers.0"),
        ("encoder.layers.0", None, {}, "encoder.layers.0"),
        ("run a (latest values)", 10, {"keep": "start", "ellipsis": "…"}, "run a (la…"),
        ("run a (latest values)", 10, {"keep": "start"}, "run a (..."),
        ("abcdefghij", 5, {"ellipsis": ""}, "fghij"),
    ],
)
def test_clip(text, width, kwargs, want):
    got = clip(text, width, **kwargs)
    assert got == want
    assert width is None or len(got) <= width


@pytest.mark.parametrize(
    ("name", "globs", "subtree", "want"),
    [
        ("gradients/norm/net.3", ["gradients/*"], False, True),  # * crosses / and .
        ("gradients/norm/net.3", ["*/norm/net.?"], False, True),
        ("gradients/norm/net.3", ["Gradients/*"], False, False),  # case-sensitive
        ("gradients/norm/net.3", [], False, False),
        ("gradients/norm/net.3", ["health/*", "gradients/norm/net.[0-3]"], False, True),
        ("encoder.layers.0", ["encoder"], False, False),
        ("encoder.layers.0", ["encoder"], True, True),  # an ancestor stands for its subtree
        ("encoder.layers.0", ["encoder.layers"], True, True),
        ("encoder.layers.0", ["encoder.layers.0"], True, True),
        ("encoder", ["encoder.layers.0"], True, False),  # never a descendant for its ancestor
        ("encoder.layers.0", ["enc"], True, False),  # whole dotted parts only
        ("encoder.layers.0", ["enc*"], True, True),
        ("decoder.layers.0", ["*.layers"], True, True),
        ("layers.10", ["layers.1"], True, False),
        ("vanishing_gradients", ["*_gradients"], False, True),  # finding kinds
    ],
)
def test_matches(name, globs, subtree, want):
    assert matches(name, globs, subtree=subtree) is want
    assert matches(name, iter(globs), subtree=subtree) is want  # any iterable of globs
