"""The trainer on the tiny preset: losses fall, checkpoints resume exactly, EMA, LoRA, config errors.

One ``Trainer`` per configuration keeps the compiled step programs, so the runs below (fresh, paused and resumed)
compile each stage once per backend.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from sd_keras import train as train_lib
from sd_keras.pipeline import StableDiffusion

COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")


def two_stage_config(**changes):
    config = {
        "model": {"preset": "tiny"},
        "data": {"source": "shapes", "num_samples": 1, "seed": 1},  # every batch: the same image
        "train": {"checkpoint_every": 3, "checkpoint_minutes": 0, "log_every": 1},
        "stages": {
            "vae": {"components": ["vae"], "steps": 8, "batch_size": 3, "learning_rate": 3e-3, "warmup_steps": 0,
                    "ema_decay": 0.5, "edge_weight": 0.1},
            "diffusion": {"components": ["text_encoder", "unet"], "steps": 4, "batch_size": 3,
                          "learning_rate": 1e-3, "warmup_steps": 1, "snr_gamma": 5.0},
        },
        "eval": {"enabled": False},
    }
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value}
    return config


@pytest.fixture(scope="module")
def trainer():
    return train_lib.Trainer(two_stage_config())


@pytest.fixture(scope="module")
def uninterrupted(trainer, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, trainer.run(str(out), progress=False)


def _log(out):
    with open(os.path.join(out, "train_log.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def _model_tensors(folder):
    return {c: load_file(os.path.join(folder, f"{c}.safetensors")) for c in COMPONENTS}


def test_losses_fall_on_a_fixed_batch(uninterrupted):
    out, summary = uninterrupted
    assert summary["complete"] and summary["global_step"] == 12
    log = _log(out)
    vae = [r for r in log if r["stage"] == "vae"]
    diffusion = [r for r in log if r["stage"] == "diffusion"]
    assert [r["step"] for r in vae] == list(range(1, 9)) and [r["step"] for r in diffusion] == [1, 2, 3, 4]
    recon = [r["recon"] for r in vae]
    assert recon[-1] < 0.5 * recon[0] and all(b < a for a, b in zip(recon, recon[1:])), recon
    assert all(np.isfinite(r["loss"]) for r in log) and "mse" in diffusion[0] and "edge" in vae[0]


def test_the_run_exports_a_loadable_model(uninterrupted):
    from sd_keras.pipeline import StableDiffusion

    out, summary = uninterrupted
    assert summary["model"] == os.path.join(str(out), "model")
    model = StableDiffusion.from_checkpoint(summary["model"])
    assert model.config.name == "tiny"
    checkpoint, info = train_lib.read_checkpoint(os.path.join(out, train_lib.CHECKPOINT_NAME))
    assert info["stage"] is None and info["global_step"] == 12  # finished: weights only
    exported = _model_tensors(summary["model"])
    for component in COMPONENTS:
        for key, value in exported[component].items():
            np.testing.assert_array_equal(value, checkpoint[f"{component}/{key}"])


def test_pause_and_resume_give_the_uninterrupted_weights(trainer, uninterrupted, tmp_path):
    """Stop after every step (time limit 0) and resume, across the stage boundary: the same weights bit for bit."""
    out, _ = uninterrupted
    resumed = str(tmp_path)
    summary = trainer.run(resumed, progress=False, max_minutes=1e-9)
    assert not summary["complete"] and summary["global_step"] == 1
    checkpoint, info = train_lib.read_checkpoint(os.path.join(resumed, train_lib.CHECKPOINT_NAME))
    assert (info["stage"], info["stage_step"]) == ("vae", 1)

    # EMA after one step: decay min(0.5, (1 + 0) / (10 + 0)) = 0.1 between the initial and the new weights
    runner = trainer.runner(0)
    keys = trainer.parts.keys()
    for index, variable in enumerate(runner.trainable_variables):
        key = keys[id(variable)]
        expected = 0.1 * trainer._initial[key] + 0.9 * checkpoint[key]
        np.testing.assert_allclose(checkpoint[f"ema/{index:05d}"], expected, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(checkpoint[keys[id(runner.trainable_variables[0])]],
                              trainer._initial[keys[id(runner.trainable_variables[0])]])

    for _ in range(20):
        summary = trainer.run(resumed, resume=True, progress=False, max_minutes=1e-9)
        if summary["complete"]:
            break
    assert summary["complete"] and summary["global_step"] == 12
    expected, actual = _model_tensors(os.path.join(out, "model")), _model_tensors(summary["model"])
    for component in COMPONENTS:
        for key in expected[component]:
            np.testing.assert_array_equal(actual[component][key], expected[component][key], err_msg=key)
    assert [r["loss"] for r in _log(resumed)] == [r["loss"] for r in _log(out)]


def test_resume_after_a_kill_logs_each_step_once_and_removes_stale_temporaries(trainer, uninterrupted, tmp_path):
    """A run killed after step 5 whose last checkpoint is from step 3: the resumed run logs steps 4 and 5 once,
    and the temporary files of writes killed mid-way are gone."""
    out, _ = uninterrupted
    run = str(tmp_path / "run")
    checkpoint = os.path.join(run, train_lib.CHECKPOINT_NAME)
    trainer.run(run, progress=False, max_minutes=1e-9)  # pauses after every step
    for _ in range(2):
        trainer.run(run, resume=True, progress=False, max_minutes=1e-9)
    with open(checkpoint, "rb") as handle:
        at_step_3 = handle.read()
    for _ in range(2):
        trainer.run(run, resume=True, progress=False, max_minutes=1e-9)
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4, 5]
    with open(checkpoint, "wb") as handle:  # the kill: steps 4 and 5 were logged, not checkpointed
        handle.write(at_step_3)
    with open(os.path.join(run, train_lib.LOG_NAME), "a") as handle:
        handle.write('{"stage": "vae", "st')  # a record cut off by the kill
    stale = [os.path.join(run, ".checkpoint.safetensors.0123456789ab.tmp.safetensors"),  # files.atomic_path
             os.path.join(run, ".checkpoint.safetensors.k2x_9abc.tmp"),  # earlier versions (mkstemp)
             os.path.join(run, ".summary.json.abcdefabcdef.tmp")]
    for path in stale:
        with open(path, "wb") as handle:
            handle.write(b"half a file")
    unrelated = os.path.join(run, "notes.tmp")
    open(unrelated, "w").close()

    summary = trainer.run(run, resume=True, progress=False)
    assert summary["complete"] and summary["global_step"] == 12
    assert [(r["stage"], r["step"]) for r in _log(run)] == [(r["stage"], r["step"]) for r in _log(out)]
    assert [r["loss"] for r in _log(run)] == [r["loss"] for r in _log(out)]
    assert not any(os.path.exists(path) for path in stale) and os.path.exists(unrelated)
    assert not [name for name in os.listdir(run) if ".tmp" in name and name != "notes.tmp"]


def test_a_fresh_run_starts_a_new_log(trainer, tmp_path):
    with open(tmp_path / train_lib.LOG_NAME, "w") as handle:
        handle.write(json.dumps({"stage": "vae", "step": 1, "loss": 99.0}) + "\n")
    trainer.run(str(tmp_path), progress=False, max_minutes=1e-9)
    assert [r["step"] for r in _log(tmp_path)] == [1] and _log(tmp_path)[0]["loss"] != 99.0


@pytest.mark.parametrize("minutes", [-1, 0, float("nan"), float("inf")])
def test_nonsense_time_limits_are_refused(trainer, tmp_path, minutes):
    with pytest.raises(ValueError, match="--max-minutes must be a finite number of minutes > 0"):
        trainer.run(str(tmp_path), progress=False, max_minutes=minutes)
    assert not os.path.exists(tmp_path / train_lib.CHECKPOINT_NAME)


@pytest.mark.once  # argument checks only: backend-independent (see conftest.py)
@pytest.mark.parametrize("minutes", ["-1", "0", "nan", "-inf"])
def test_cli_refuses_nonsense_max_minutes_before_building_anything(tmp_path, capsys, minutes):
    from sd_keras import cli

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "o"
    status = cli.main(["train", os.path.join(root, "configs", "tiny_test.yaml"), "--out", str(out),
                       f"--max-minutes={minutes}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("sd-keras: error: --max-minutes must be a finite number of minutes > 0")
    assert not out.exists()


def test_resume_rules(trainer, uninterrupted, tmp_path):
    out, _ = uninterrupted
    with pytest.raises(ValueError, match="already has a checkpoint"):
        trainer.run(str(out), progress=False)
    with pytest.raises(ValueError, match="no checkpoint"):
        trainer.run(str(tmp_path), resume=True, progress=False)
    other = train_lib.Trainer(two_stage_config(model={"preset": "tiny", "unet": {"block_out_channels": [32, 32]}}))
    with pytest.raises(ValueError, match=r"another architecture.*unet\.block_out_channels: \[32, 64\] vs \[32, 32\]"):
        other.run(str(out), resume=True, progress=False)


def test_model_init_allows_another_image_size_but_not_another_architecture(tiny_sd):
    source = tiny_sd  # StableDiffusion.from_preset("tiny"), the session's (conftest.py)
    trainer = train_lib.Trainer(two_stage_config(model={"preset": "tiny", "init": "tiny", "image_size": [128, 128]}))
    assert trainer.model_config.image_size == (128, 128) != source.config.image_size
    for name in ("text_encoder", "diffusion_model", "decoder"):
        for ours, theirs in zip(getattr(trainer.parts, name).weights, getattr(source, name).weights):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=ours.path)
    with pytest.raises(ValueError, match=r"model.init: 'tiny' has another architecture.*block_out_channels"):
        train_lib.Trainer(two_stage_config(model={"preset": "tiny", "init": "tiny",
                                                  "unet": {"block_out_channels": [32, 32]}}))


def _folder_data(folder, count=3):
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w") as handle:
            handle.write(f"a photo of my thing number {i}")


def test_lora_fine_tune_changes_only_the_adapters(tmp_path):
    from sd_keras.pipeline import StableDiffusion
    from sd_keras.weights.saved import save_pretrained

    base = str(tmp_path / "base")
    save_pretrained(StableDiffusion.from_config("tiny", seed=3), base)
    _folder_data(str(tmp_path / "images"))
    config = {"model": {"preset": "tiny", "init": base},
              "data": {"source": "folder", "folder": str(tmp_path / "images")},
              "train": {"checkpoint_minutes": 0, "log_every": 1, "steps_per_call": 2},
              "stages": {"lora": {"components": ["unet"], "lora_rank": 2, "lora_alpha": 4.0, "steps": 4,
                                  "batch_size": 2, "learning_rate": 1e-2, "warmup_steps": 0, "ema_decay": 0.5}},
              "eval": {"enabled": False}}
    trainer = train_lib.Trainer(config)
    summary = trainer.run(str(tmp_path / "run"), progress=False)
    assert summary["complete"] and summary["global_step"] == 4
    assert len(_log(str(tmp_path / "run"))) == 2  # two calls of two steps

    before, after = _model_tensors(base), _model_tensors(summary["model"])
    for component in ("text_encoder", "decoder", "image_encoder"):
        for key in before[component]:
            np.testing.assert_array_equal(after[component][key], before[component][key])
    adapters = load_file(summary["lora"])
    adapted = sorted({key.rsplit(".", 1)[0] for key in adapters})
    assert adapted and all(key.split("/")[-1] in ("q_proj", "k_proj", "v_proj", "out_proj") for key in adapted)
    for key, value in before["diffusion_model"].items():
        layer = key.rsplit("/", 1)[0]
        if layer in adapted and key.endswith("/kernel"):
            merged = value + 4.0 / 2 * adapters[f"{layer}.lora_a"] @ adapters[f"{layer}.lora_b"]
            np.testing.assert_allclose(after["diffusion_model"][key], merged, rtol=1e-5, atol=1e-6)
            assert not np.allclose(after["diffusion_model"][key], value)
        else:  # biases, norms, convolutions and Dense layers without adapters
            np.testing.assert_array_equal(after["diffusion_model"][key], value, err_msg=key)

    # the adapter file on the base model gives the merged model's UNet
    plain = StableDiffusion.from_checkpoint(base)
    assert train_lib.load_lora(plain.diffusion_model, summary["lora"]) == adapted
    merged = StableDiffusion.from_checkpoint(summary["model"])
    rng = np.random.default_rng(1)
    inputs = {"latent": rng.normal(size=(1, 8, 8, 4)).astype("float32"),
              "timestep_embedding": rng.normal(size=(1, 32)).astype("float32"),
              "context": rng.normal(size=(1, 77, 32)).astype("float32")}
    np.testing.assert_allclose(np.asarray(plain.diffusion_model(inputs)), np.asarray(merged.diffusion_model(inputs)),
                               rtol=1e-4, atol=1e-5)

    # pause after the first call and resume: the same adapters
    paused = trainer.run(str(tmp_path / "resumed"), progress=False, max_minutes=1e-9)
    assert not paused["complete"] and paused["global_step"] == 2
    resumed = trainer.run(str(tmp_path / "resumed"), resume=True, progress=False)
    for key, value in load_file(resumed["lora"]).items():
        np.testing.assert_array_equal(value, adapters[key])


@pytest.mark.once  # config parsing only: backend-independent (see conftest.py)
@pytest.mark.parametrize("changes, message", [
    (["stages.vae.stpes=3"], "stages.vae.stpes: unknown key"),
    (["trian.steps=3"], "trian: unknown key"),
    (["train.steps=many"], "train.steps"),
    (["train.precision=fp8"], "train.precision: must be one of"),
    (["stages.vae.components=[vae,clip]"], "stages.vae.components: must be one of"),
    (["stages.vae.lora_rank=4"], "stages.vae.components: a LoRA stage"),
    (["stages.diffusion.lora_rank=4", "stages.diffusion.components=[unet]"], "must be the config's only stage"),
    (["data.source=folder"], "data.folder: source=folder needs data.folder"),
    (["stages.vae.ema_decay=1.0"], "stages.vae.ema_decay"),
    (["eval.sampler=nope"], "eval.sampler"),
    (["train.steps"], "must look like key=value"),
    (["train.max_minutes=-1"], "train.max_minutes: must be a finite number > 0"),
    (["train.max_minutes=nan"], "train.max_minutes: must be a finite number > 0"),
    (["train.checkpoint_minutes=inf"], "train.checkpoint_minutes: must be a finite number >= 0"),
])
def test_config_errors_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        train_lib.load_config(two_stage_config(), changes)


@pytest.mark.once  # config parsing only: backend-independent (see conftest.py)
def test_model_overrides(tmp_path):
    config = train_lib.load_config(two_stage_config(), ["model.unet.block_out_channels=[32,32]",
                                                        "model.vae.kl=1"])
    with pytest.raises(ValueError, match="model.vae.kl: unknown VAEConfig field"):
        train_lib.build_model_config(config.model)
    config = train_lib.load_config(two_stage_config(), ["model.unet.block_out_channels=[32,32]"])
    model_config = train_lib.build_model_config(config.model)
    assert model_config.unet.block_out_channels == (32, 32) and model_config.name == "tiny-custom"
    config = train_lib.load_config(two_stage_config(), ["model.unet.norm_groups=7"])
    with pytest.raises(ValueError, match="model.unet: channels 32 are not divisible by norm_groups 7"):
        train_lib.build_model_config(config.model)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("stages: [unclosed")
    with pytest.raises(ValueError, match="bad.yaml"):
        train_lib.load_config(str(bad_yaml))
    with pytest.raises(ValueError, match="does not exist"):
        train_lib.load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.once  # config parsing only: backend-independent (see conftest.py)
def test_shipped_configs_are_valid():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shapes = train_lib.load_config(os.path.join(root, "configs", "shapes.yaml"))
    assert train_lib.build_model_config(shapes.model).name == "shapes"
    assert list(shapes.stages) == ["vae", "diffusion"]
    tiny = train_lib.load_config(os.path.join(root, "configs", "tiny_test.yaml"))
    assert train_lib.build_model_config(tiny.model).name == "tiny"


@pytest.mark.once  # config parsing only: backend-independent (see conftest.py)
def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    from sd_keras import cli

    config = tmp_path / "c.yaml"
    config.write_text("model: {preset: tiny}\nstages: {vae: {components: [vae], steps: 2, lr: 1}}\n")
    status = cli.main(["train", str(config), "--out", str(tmp_path / "o")])
    stderr = capsys.readouterr().err
    assert status == 2
    lines = [line for line in stderr.splitlines() if line.startswith("sd-keras: error:")]
    assert len(lines) == 1 and "stages.vae.lr: unknown key" in lines[0], stderr
    assert "Traceback" not in stderr and not (tmp_path / "o").exists()


MULTI_DEVICE_SCRIPT = """
import json, sys
import keras
import numpy as np
from sd_keras import backend, train
config = json.loads(sys.argv[1])
results = {}
for devices in ("all", None):
    keras.distribution.set_distribution(None)
    trainer = train.Trainer(config, devices=devices)
    runner = trainer.runner(0)
    images = backend.shard_batch(trainer.images[np.arange(4)[:, None] % len(trainer.images)])
    summary = trainer.run(sys.argv[2] + str(devices), progress=False)
    shards = getattr(images, "addressable_shards", [images])  # without a distribution: a plain array
    results[str(devices)] = {"devices": trainer.devices, "shards": len(shards),
                             "weights": [np.asarray(v).tolist() for v in runner.trainable_variables[:3]],
                             "losses": [json.loads(line)["loss"] for line in open(sys.argv[2] + str(devices)
                                                                                   + "/train_log.jsonl")]}
print("RESULT" + json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.once  # always runs JAX in a subprocess (see conftest.py)
def test_data_parallel_training_matches_one_device(tmp_path):
    """Two host devices stand in for two GPUs: the batch is split and the training result is the same."""
    config = two_stage_config()
    # a large Adam epsilon: near-zero gradients (equal up to the summation order) must not become +-lr steps
    config["stages"] = {"vae": {**config["stages"]["vae"], "steps": 2, "batch_size": 4, "epsilon": 1e-2}}
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT, json.dumps(config), str(tmp_path / "run")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.split("RESULT", 1)[1])
    two, one = results["all"], results["None"]
    assert (two["devices"], two["shards"], one["devices"], one["shards"]) == (2, 2, 1, 1)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    for a, b in zip(two["weights"], one["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
