"""Recipe loading: extends, validation before any stage, errors naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image.recipe import TARGETS, RecipeError, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_has_a_valid_recipe(recipe_dir: Path, name: str) -> None:
    loaded = load_recipe(recipe_dir / f"{name}.toml")
    assert loaded.recipe.target.name == name
    assert loaded.recipe.models.primary == "models/inspect-primary"
    assert (recipe_dir / "base.toml") in loaded.files
    assert len(loaded.digest) == 64


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_repo_recipes_parse_without_model_files(name: str) -> None:
    load_recipe(RECIPES / f"{name}.toml", check_files=False)


def test_extends_merges_tables_and_child_wins(recipe_dir: Path) -> None:
    loaded = load_recipe(recipe_dir / "intel-openvino.toml")
    r = loaded.recipe
    assert r.partitions.rootfs_mib == 1408  # child
    assert r.partitions.boot_mib == 64  # base
    assert "systemd-sysv" in r.rootfs.packages  # base list kept
    assert r.rootfs.extra_packages[0] == "linux-image-amd64"
    assert loaded.provenance["partitions.rootfs_mib"] == recipe_dir / "intel-openvino.toml"
    assert loaded.provenance["partitions.boot_mib"] == recipe_dir / "base.toml"


def test_digest_does_not_depend_on_checkout_location(tmp_path: Path, recipe_dir: Path) -> None:
    import shutil

    other = tmp_path / "elsewhere" / "recipes"
    shutil.copytree(recipe_dir, other)
    a = load_recipe(recipe_dir / "generic-x86-64.toml")
    b = load_recipe(other / "generic-x86-64.toml")
    assert a.digest == b.digest


def test_model_paths_in_a_base_are_relative_to_the_base(tmp_path: Path, recipe_dir: Path) -> None:
    sub = tmp_path / "site"
    sub.mkdir()
    (sub / "mine.toml").write_text(
        f'extends = "{recipe_dir}/generic-x86-64.toml"\nversion = "2.0.0"\n'
    )
    loaded = load_recipe(sub / "mine.toml")
    assert loaded.resolve(loaded.recipe.models.primary) == recipe_dir / "models" / "inspect-primary"
    assert loaded.recipe.version == "2.0.0"


def _write(recipe_dir: Path, text: str) -> Path:
    path = recipe_dir / "bad.toml"
    path.write_text('extends = "generic-x86-64.toml"\n' + text)
    return path


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ("colour = 1\n", "colour", "unknown field"),
        ("[partitions]\nrootfs_mb = 5\n", "partitions.rootfs_mb", "unknown field"),
        ('[partitions]\nrootfs_mib = "big"\n', "partitions.rootfs_mib", "Expected `int`"),
        ("[partitions]\nrootfs_mib = 64\n", "partitions.rootfs_mib", "too small"),
        ("[partitions]\nboot_mib = 8\n", "partitions.boot_mib", "minimum"),
        ('[models]\nprimary = "models/nope"\n', "models.primary", "no model package"),
        ('[target]\nname = "toaster"\n', "target.name", "unknown target"),
        ('[target]\narch = "riscv64"\n', "target.arch", "use one of: amd64, arm64"),
        ('[target]\nbackend = "openvino"\n', "target.backend", "does not fit"),
        ('version = "one"\n', "version", "not a version"),
        ("security_version = -1\n", "security_version", ">= 0"),
        ('[rootfs]\nextra_packages = ["Bad Name"]\n', "rootfs.extra_packages", "Debian package"),
        ("[rootfs]\nextra_packages = [1]\n", "rootfs.extra_packages.0", "Expected `str`"),
        ("[health]\nbudget_factor = 0\n", "health.budget_factor", "between"),
        ("[health]\nbudget_factor = 5000\n", "health.budget_factor", "between 0.1 and 1000"),
        ('[models]\nselect = "smallest"\n', "models.select", "no effect without models.optimise"),
        ("[models]\nmax_accuracy_drop = 2.0\n", "models.max_accuracy_drop", "no effect without"),
        (
            "[models]\noptimise = true\nmax_accuracy_drop = 101\n",
            "models.max_accuracy_drop",
            "percentage points between 0 and 50",
        ),
        (
            "[models]\noptimise = true\nmax_accuracy_drop = -0.5\n",
            "models.max_accuracy_drop",
            "and 50",
        ),
        (
            '[models]\noptimise = true\nselect = "tiny"\n',
            "models.select",
            "use one of: fastest, smallest, fp32",
        ),
        ('[models]\noptimise = "yes"\n', "models.optimise", "Expected `bool`"),
        ("[models]\noptimize = true\n", "models.optimize", "unknown field"),
    ],
)
def test_bad_recipe_names_file_and_field(
    recipe_dir: Path, text: str, field: str, needle: str
) -> None:
    path = _write(recipe_dir, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == field
    assert needle in str(info.value)
    assert info.value.path == path
    assert str(path) in str(info.value) and field in str(info.value)


def test_error_in_base_names_the_base_file(recipe_dir: Path) -> None:
    base = recipe_dir / "base.toml"
    base.write_text(base.read_text() + "\n[extra]\nwatchdog = 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_dir / "generic-x86-64.toml")
    assert info.value.path == base
    assert info.value.field == "extra"


def test_missing_required_field(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('product = "x"\nversion = "1.0.0"\nsecurity_version = 0\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == "target"
    assert "missing required field" in str(info.value)


def test_extends_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="cycle in extends"):
        load_recipe(tmp_path / "a.toml")


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("product = \n")
    with pytest.raises(RecipeError, match=r"r\.toml: not valid TOML: .*line 1"):
        load_recipe(path)


def test_missing_file_and_missing_base(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.toml")
    (tmp_path / "r.toml").write_text('extends = "gone.toml"\n')
    with pytest.raises(RecipeError, match=r"gone\.toml: file not found"):
        load_recipe(tmp_path / "r.toml")


def test_qemu_profile_overrides_pipeline_and_budget(recipe_dir: Path) -> None:
    loaded = load_recipe(recipe_dir / "qemu-x86-64.toml")
    r = loaded.recipe
    assert r.target.name == "generic-x86-64"
    assert r.pipeline.source.startswith("npz:/opt/edgekiln/models/primary/reference.npz")
    assert r.health.budget_factor == 500.0
    assert "forward_to_console" in r.kernel.cmdline


def test_model_optimisation_options(recipe_dir: Path) -> None:
    plain = load_recipe(recipe_dir / "generic-x86-64.toml")
    m = plain.recipe.models
    assert (m.optimise, m.max_accuracy_drop, m.select) == (False, 1.0, "fastest")
    # Defaults are left out of the canonical form: recipes without optimisation keep their digest.
    assert set(plain.to_dict()["models"]) == {"primary", "fallback"}
    path = _write(recipe_dir, "[models]\noptimise = true\nmax_accuracy_drop = 2\n")
    loaded = load_recipe(path)
    m = loaded.recipe.models
    assert (m.optimise, m.max_accuracy_drop, m.select) == (True, 2.0, "fastest")
    assert loaded.to_dict()["models"]["optimise"] is True
    assert loaded.digest != plain.digest
    # A child that turns optimisation off may inherit a base's options (they are inert then).
    child = recipe_dir / "child.toml"
    child.write_text('extends = "bad.toml"\n[models]\noptimise = false\n')
    assert load_recipe(child).recipe.models.optimise is False


def test_repo_openvino_recipe_asks_for_the_optimised_model() -> None:
    m = load_recipe(RECIPES / "intel-openvino.toml", check_files=False).recipe.models
    assert m.optimise and m.max_accuracy_drop == 1.0


def test_default_recipe_runtime_has_no_opencv_unless_a_recipe_opts_in(recipe_dir: Path) -> None:
    from image.build.device_files import device_config, pipeline_config
    from image.freeze.runtime import target_spec

    default = load_recipe(recipe_dir / "generic-x86-64.toml")
    assert default.recipe.runtime.extras == ()
    spec = target_spec(default)
    assert spec.backends == ("onnxruntime",)
    assert "cv2" in spec.excluded_modules and "cv2" not in spec.included_modules
    # The device is told the same: the fallback chain and device.json name no OpenCV.
    assert json.loads(pipeline_config(default))["backends"] == ["onnxruntime"]
    runtime = json.loads(device_config(default))["runtime"]
    assert runtime == {"backends": ["onnxruntime"], "extras": []}
    qemu = load_recipe(recipe_dir / "qemu-x86-64.toml")
    assert qemu.recipe.runtime.extras == ()
    # The default image, the QEMU profile and the generic target name freeze one runtime (one
    # shared cache key, tests/image/test_freeze.py builds it and finds no cv2 in it).
    assert target_spec(qemu) == spec == target_spec("generic-x86-64")
    # The documented opt-in: OpenCV as the chain's last back end, in the runtime and on device.
    opt_in = load_recipe(_write(recipe_dir, '[runtime]\nextras = ["opencv"]\n'))
    assert target_spec(opt_in).backends == ("onnxruntime", "opencv")
    assert "cv2" in target_spec(opt_in).included_modules
    assert json.loads(pipeline_config(opt_in))["backends"] == ["onnxruntime", "opencv"]
    assert json.loads(device_config(opt_in))["runtime"]["extras"] == ["opencv"]
    with pytest.raises(RecipeError, match=r"runtime\.extras"):
        load_recipe(_write(recipe_dir, '[runtime]\nextras = ["cuda"]\n'))


def test_runtime_extras_count_in_the_root_size_check(recipe_dir: Path) -> None:
    small = _write(recipe_dir, '[partitions]\nrootfs_mib = 1000\n[runtime]\nextras = ["opencv"]\n')
    with pytest.raises(RecipeError, match=r"partitions\.rootfs_mib.*runtime extras 170"):
        load_recipe(small)


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ('[telemetry]\nbroker = "http://x"\n', "telemetry.broker", "mqtt://HOST"),
        ('[telemetry]\nbroker = "mqtts://b.lan"\n', "telemetry.ca_file", "needs ca_file"),
        ('[telemetry]\nbroker = "mqtt://b.lan"\nwindow_s = 0.5\n', "telemetry.window_s", "1 and"),
        ("[telemetry]\ndrift_psi = 0\n", "telemetry.drift_psi", "drift_psi"),
        ('[telemetry]\nresults = "every"\n', "telemetry.results", "Invalid enum value"),
    ],
)
def test_bad_telemetry_tables_name_file_and_field(
    recipe_dir: Path, text: str, field: str, needle: str
) -> None:
    path = _write(recipe_dir, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == field and needle in str(info.value)


def test_telemetry_table_becomes_the_slot_telemetry_json(recipe_dir: Path) -> None:
    import json

    from appliance.inference.pipeline import load_config
    from appliance.telemetry.settings import effective
    from image.build.device_files import pipeline_config, telemetry_config

    plain = load_recipe(recipe_dir / "generic-x86-64.toml")
    assert json.loads(telemetry_config(plain)) == {"format": 1}  # off without a broker
    path = _write(
        recipe_dir, '[telemetry]\nbroker = "mqtt://fleet.plant.lan:1884"\nwindow_s = 30\n'
    )
    loaded = load_recipe(path)
    doc = json.loads(pipeline_config(loaded))
    assert "mqtt" not in doc and "telemetry" not in doc  # on the slot, not the flash-time data
    cfg_path = recipe_dir / "pipeline.json"
    cfg_path.write_bytes(pipeline_config(loaded))
    slot = recipe_dir / "telemetry.json"
    slot.write_bytes(telemetry_config(loaded))
    data = recipe_dir / "data"
    cfg = load_config(cfg_path)  # the device's own parser accepts what the builder wrote
    mqtt, telemetry = effective(cfg.mqtt, cfg.telemetry, slot=slot, data=data)
    assert mqtt is not None and telemetry is not None
    assert (mqtt.host, mqtt.port) == ("fleet.plant.lan", 1884)
    assert mqtt.buffer_dir == str(data / "edgekiln" / "mqtt-buffer")
    assert telemetry.window_s == 30 and telemetry.results == "off"
    assert telemetry.device_id == "" and telemetry.site == ""  # read from data
