"""The measuring tools the benchmarks rely on: model FLOPs from the jaxpr, the profiler-trace summary,
and the DDIM-vs-ancestral sampler comparison through the real trainer (tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import profile_step  # noqa: E402
import sampler_quality  # noqa: E402
from conftest import cli_env


def test_model_flops_counts_convolutions_matmuls_and_scan_lengths():
  x = jnp.ones((2, 16, 16, 8))
  dense = jnp.ones((3, 3, 8, 4))
  depthwise = jnp.ones((3, 3, 1, 8))

  def conv(a, k, groups=1):
    return jax.lax.conv_general_dilated(a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)

  assert common.model_flops(conv, x, dense) == 2 * (2 * 16 * 16 * 4) * (8 * 9)
  assert common.model_flops(lambda a: conv(a, depthwise, 8), x) == 2 * (2 * 16 * 16 * 8) * 9
  m = jnp.ones((4, 5))
  assert common.model_flops(lambda a: a @ a.T, m) == 2 * 4 * 4 * 5
  scanned = lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=7)[0]
  assert common.model_flops(scanned, jnp.ones((4, 4))) == 7 * 2 * 4 * 4 * 4
  # through jit and a cond (its costliest branch)
  branchy = jax.jit(lambda a, p: jax.lax.cond(p, lambda b: b @ b @ b, lambda b: b, a))
  assert common.model_flops(branchy, jnp.ones((4, 4)), True) == 2 * 2 * 4 * 4 * 4


def test_profile_step_traces_and_summarises_a_unet_forward(tmp_path):
  summary = profile_step.main(["--target=unet:small", "--dtype=float32", "--batch=1", "--height=16", "--width=16",
                               "--steps=2", "--warmup=1", "--top=5", f"--out={tmp_path}"])
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["steps"] == 2 and saved["kernel_ms_per_step"] > 0 and saved["window_ms_per_step"] > 0
  assert len(saved["top_kernels"]) == 5 and sum(saved["by_kind"].values()) > 0
  assert summary["what"].startswith("U-Net small forward")
  again = profile_step.summarize(tmp_path, 2, 5)  # --analyze of the saved trace gives the same table
  assert again["top_kernels"] == saved["top_kernels"]
  for name, kind in (("loop_convert_fusion_5", "convert"), ("sm90_xmma_fprop_implicit_gemm_bf16", "conv"),
                     ("cudnn-conv-bias-activation.1", "conv"), ("input_reduce_fusion_9", "reduce"),
                     ("wrapped_concatenate_4", "concatenate"), ("nvjet_sm90_tst_64x512", "gemm")):
    assert profile_step.kind_of(name) == kind, name
  (tmp_path / "a_file").write_text("")
  with pytest.raises(SystemExit, match="a_file: exists and is not a directory"):
    profile_step.main([f"--out={tmp_path / 'a_file'}"])  # refused before the target is built


def test_sampler_quality_parses_samplers():
  assert sampler_quality.parse_sampler("ddpm") == {"label": "ddpm (all T)", "name": "ddpm", "steps": None, "eta": 0.0}
  assert sampler_quality.parse_sampler("ddim:50") == {"label": "ddim-50 eta 0", "name": "ddim", "steps": 50, "eta": 0.0}
  assert sampler_quality.parse_sampler("ddim:25:0.5")["eta"] == 0.5
  for bad in ("ddim", "ddim:x", "ddim:50:2", "ddim:50:a", "ddpm:10", "dpm:5", "ddim:5:1:1"):
    with pytest.raises(ValueError, match="--samplers"):
      sampler_quality.parse_sampler(bad)


def test_sampler_quality_tiny(tmp_path):
  """Trains the main job's config at its :tiny size (refining the classical merge, no estimator network:
  less to compile) for 2 steps through the trainer, then scores one checkpoint with the
  full ancestral sampler and DDIM, one seed each; the first sampler is the reference of the gaps."""
  out = tmp_path / "sq.json"
  env = {"HDR_JAX_CACHE": str(tmp_path / "cache"), **cli_env(), "PYTHONPATH": str(ROOT),
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "benchmarks/sampler_quality.py", f"--workdir={tmp_path / 'run'}", "--train_steps=2",
       "--val_scenes=1", "--samplers=ddpm,ddim:5:1", "--seeds=0", "--config=diffusion:tiny",
       "--config.diffusion.estimate=merge", f"--json={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [(r["sampler"], r["seed"]) for r in report["rows"]] == [("ddpm (all T)", 0), ("ddim-5 eta 1", 0)]
  assert all(np.isfinite(r["psnr_mu"]) and r["scenes"] == 1 for r in report["rows"])
  summary = report["summary"]
  assert summary["ddpm (all T)"]["gap_to_reference_db"] == 0.0
  ddim = [r["psnr_mu"] for r in report["rows"] if r["sampler"] == "ddim-5 eta 1"]
  assert np.isclose(summary["ddim-5 eta 1"]["psnr_mu"], np.mean(ddim))
  assert np.isclose(summary["ddim-5 eta 1"]["gap_to_reference_db"], np.mean(ddim) - summary["ddpm (all T)"]["psnr_mu"])
  assert np.isfinite(report["baseline"]["psnr_mu"]) and "ddim-5 eta 1" in proc.stdout
  # each evaluation is reported as it ends, in order, before the summary table
  done = [ln for ln in proc.stdout.splitlines() if ln.startswith("sampler quality: ") and ", seed " in ln]
  assert [ln.split(":")[1].strip() for ln in done] == ["ddpm (all T), seed 0", "ddim-5 eta 1, seed 0"], done
  assert any((tmp_path / "run" / "xla_cache").iterdir())  # the evaluations' shared compilation cache


def test_models_benchmark_variants_and_phase_order(tmp_path, capsys):
  """``NAME@KEY=VALUE`` measures a variant of a config beside it; ``--phase_major`` measures every
  model's inference before any training step."""
  import models

  assert models.split_model_spec("ahdrnet", {"seed": 1}) == ("ahdrnet", {"seed": 1})
  assert models.split_model_spec("ahdrnet@model.dense_form=scatter@model.polyphase=false", {"seed": 1}) == (
      "ahdrnet", {"seed": 1, "model.dense_form": "scatter", "model.polyphase": False})
  report = models.main(["--models=ahdrnet@model.channels=8@model.growth=4@model.n_dense=2@model.n_blocks=1,"
                        "ahdrnet@model.channels=8@model.growth=4@model.n_dense=2@model.n_blocks=1"
                        "@model.dense_form=scatter", "--dtypes=float32", "--phases=infer,train", "--phase_major",
                        "--batch=1", "--patch=16", "--height=16", "--width=24", "--repeats=1", "--warmup=0",
                        "--iters=1", "--inference=inprocess", "--peak_tflops=none", f"--json={tmp_path / 'm.json'}"])
  out = capsys.readouterr().out.splitlines()
  order = [phase for line in out for phase in ("infer", "train") if f" float32 {phase}" in line]
  assert order == ["infer", "infer", "train", "train"], out
  rows = report["rows"]
  assert [r["model"].endswith("scatter") for r in rows] == [False, True]
  assert all(r["model_name"] == "ahdrnet" and not r["errors"] and r["infer"]["finite"] for r in rows)
  assert rows[0]["train"]["params"] == rows[1]["train"]["params"]  # the same parameters in either form
  assert rows[0]["infer"]["flops"] == rows[1]["infer"]["flops"]  # and the same multiply-adds
  with pytest.raises(SystemExit, match="--phases"):
    models.main(["--phases=fit", f"--json={tmp_path / 'x.json'}"])


def test_models_benchmark_counts_the_train_steps_own_flops(tmp_path):
  """A train step's model FLOPs come from its own jaxpr (forward and backward). For AHDRNet that is the
  usual 3 x forward less the unneeded input gradients; for the DDPM, whose predict is a whole sampler, 3 x forward would
  count every sampling step, so the train count must be far below it and agree with XLA's count of the
  compiled step (on CPU XLA counts convolutions). ``NAME:ARG`` selects a config's variant."""
  import models

  report = models.main(["--models=ahdrnet:tiny,diffusion:tiny@sampler.steps=10", "--dtypes=float32",
                        "--phases=train", "--batch=1", "--patch=16",
                        "--repeats=1", "--warmup=0", "--iters=1", "--peak_tflops=none",
                        f"--json={tmp_path / 'm.json'}"])
  ahdr, ddpm = (r["train"] for r in report["rows"])
  # below 3 x forward only by the input gradients nobody needs (of the first convolutions): 3.5 % at this
  # toy width, 0.24 % for the real AHDRNet
  assert ahdr["flops"] == ahdr["flops_train_jaxpr"] and 0.95 < ahdr["flops"] / (3 * ahdr["flops_forward"]) <= 1.0
  assert ddpm["flops"] == ddpm["flops_train_jaxpr"] and ddpm["flops"] < ddpm["flops_forward"]
  assert abs(ddpm["flops"] / ddpm["flops_xla_hlo"] - 1) < 0.25, ddpm
  cfg = models.load_config("diffusion:full", "bfloat16", 2, 64, {"seed": 3})
  assert (cfg.model.ch, cfg.sampler.name, cfg.batch_size, cfg.data.patch_size, cfg.seed) == (64, "ddpm", 2, 64, 3)
  with pytest.raises(FileNotFoundError, match="--models=nosuch:full"):
    models.load_config("nosuch:full", "float32", 1, 16, {})


def test_pipeline_sources_go_on_without_the_prepared_format(tmp_path, monkeypatch, capsys):
  """The pipeline benchmarks' shared sources: when the ArrayRecord dataset cannot be prepared (tfds
  missing, or failing on the host) the PNG and tiles sources are still opened and timed, and the
  failure is reported; ``input_pipeline.py`` runs end to end on them."""
  import importlib.util

  import input_pipeline

  from hdr_jax import synthesize

  folder = tmp_path / "ntire"
  synthesize.synthesize_folder(folder, 2, 64, 96, seed=0, verbose=False)
  tfds_installed = importlib.util.find_spec("tensorflow_datasets") is not None
  if tfds_installed:
    from hdr_jax import tfds_ntire

    def fail(*args, **kwargs):
      raise ModuleNotFoundError("No module named 'importlib_resources'")

    monkeypatch.setattr(tfds_ntire, "prepare", fail)
  sources, prepared = common.pipeline_sources(folder, tmp_path, ["tiles", "prepared/array_record", "png"])
  assert list(sources) == ["tiles", "png"]
  assert prepared["tiles"]["bytes"] > 0
  assert ("importlib_resources" in prepared["array_record"]["error"]) if tfds_installed else (
      "skipped" in prepared["array_record"])
  assert "pipeline array_record: " in capsys.readouterr().out
  rate = common.delivered_rate(sources["tiles"], patch=32, batch=2, workers=0, warmup=1, batches=2)
  assert rate["crops_per_s"] > 0 and rate["batches"] == 2
  with pytest.raises(ValueError, match="unknown pipeline sources"):
    common.pipeline_sources(folder, tmp_path, ["jpeg"])

  # Beside the fastest JAX train step of a models.py report (a faster PyTorch row is not the consumer).
  models = {"rows": [{"framework": "jax", "model": "ahdrnet", "dtype": "float32", "train": {"crops_per_s": 2.0, "ms_per_step": 1.0}},
                     {"framework": "jax", "model": "vam", "dtype": "float32", "train": {"crops_per_s": 0.5, "ms_per_step": 4.0}},
                     {"framework": "torch", "model": "ahdrnet", "dtype": "float32", "train": {"crops_per_s": 9.0, "ms_per_step": 0.2}}]}
  (tmp_path / "models.json").write_text(json.dumps(models))
  report = input_pipeline.main(["--height=64", "--width=96", "--scenes=2", "--patch=32", "--batch=2",
                                "--batches=2", "--warmup=1", "--workers=0", "--sources=png,tiles",
                                f"--consumption_from={tmp_path / 'models.json'}",
                                f"--workdir={tmp_path / 'bench'}", f"--json={tmp_path / 'p.json'}"])
  assert [r["source"] for r in report["results"]] == ["png", "tiles"]
  assert all(r["crops_per_s"] > 0 for r in report["results"])
  assert json.loads((tmp_path / "p.json").read_text())["prepared"]["tiles"]["bytes"] > 0
  assert report["consumption"]["model"] == "ahdrnet" and report["failures"] == []
  best = max(r["crops_per_s"] for r in report["results"])
  assert report["ratio"] == {"1": pytest.approx(best / 2.0)}
  assert "x the consumption (target >= 1.5x" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    input_pipeline.main([f"--consumption_from={tmp_path / 'missing.json'}", f"--json={tmp_path / 'q.json'}"])
  assert "missing.json: not a readable models.py report" in capsys.readouterr().err
  assert not (tmp_path / "q.json").exists()


def test_diffusion_sampling_reports_the_pytorch_variants_and_the_best(tmp_path, capsys):
  """The sampler benchmark's PyTorch peer at toy size on the CPU: the eager and tuned variants run in
  the same process as the JAX rows, each reported with the compiled loop's speed-up against it, and a
  ``best`` row/ratio against the faster one (torch.compile is left out: it compiles for a minute here)."""
  pytest.importorskip("torch")
  import diffusion_sampling as ds

  assert common.speed_ratios(2.0, {"eager": 8.0, "tuned": 4.0, "compile": None}) == {
      "eager": 4.0, "tuned": 2.0, "best": 2.0}
  assert common.speed_ratios(2.0, {"eager": 8.0}) == {"eager": 4.0}  # one peer: no "best"
  assert ds.torch_variant_list("auto", cuda=False) == ["eager", "tuned", "compile"]
  assert ds.torch_variant_list("auto", cuda=True, max_autotune=True) == [
      "eager", "tuned", "compile", "reduce-overhead", "max-autotune"]
  with pytest.raises(ValueError, match="--torch_variants"):
    ds.torch_variant_list("eager,fast", cuda=False)

  tiny = ["--size=small", "--height=16", "--width=16", "--batch=1", "--steps=4", "--ddim_steps=0",
          "--python_steps=0", "--torch_steps=2", "--repeats=1", "--model_set=ch=8", "--model_set=groups=4",
          "--model_set=ch_mult=(1, 2)", "--model_set=attn_levels=(1,)"]
  out = ds.main([*tiny, "--torch_variants=eager,tuned", f"--json={tmp_path / 'ds.json'}"])
  result = out["sizes"]["small"]
  variants = result["torch"]["variants"]
  assert list(variants) == ["eager", "tuned"] and all(v["finite"] for v in variants.values())
  assert variants["eager"]["memory_format"] == "contiguous" and variants["tuned"]["memory_format"] == "channels_last"
  assert variants["tuned"]["grad_mode"] == "inference_mode" and result["torch"]["params"] < 100_000
  assert [(r["framework"], r["variant"]) for r in result["rows"]] == [
      ("jax", "compiled"), ("torch", "eager"), ("torch", "tuned"), ("torch", "best")]
  rows = {r["variant"]: r for r in result["rows"]}
  assert rows["best"]["s_per_step"] == min(v["s_per_step"] for v in variants.values())
  loop = result["jax"]["compiled_s_per_step"]
  assert result["vs_torch"]["best"] == pytest.approx(rows["best"]["s_per_step"] / loop)
  assert set(result["vs_torch"]) == {"eager", "tuned", "best"}
  assert json.loads((tmp_path / "ds.json").read_text())["sizes"]["small"]["vs_torch"] == result["vs_torch"]
  text = capsys.readouterr().out
  assert "PyTorch best (= " in text and "over PyTorch best" in text

  # a variant due after the deadline is recorded as skipped, not run
  import argparse

  args = argparse.Namespace(**{**out["args"], "size": "small"})
  skipped = ds.bench_torch(args, ["eager"], over_deadline=lambda: True)
  assert skipped["variants"] == {"eager": {"skipped": "--deadline_s reached"}}


def test_gpu_targets_table_from_the_runs_json(tmp_path):
  """``gpu_targets.py`` reads what ``gpu_issue20.sh`` wrote: JAX against the fastest PyTorch variant of
  the same run for each target, the XLA options against the default run (per image for the sampler),
  and "not measured" / "no peer measured" where a JSON or a peer is missing."""
  import gpu_targets

  def models_row(framework, variant, train=None, infer=None):
    return {"model": "ahdrnet", "model_name": "ahdrnet", "dtype": "bfloat16", "framework": framework,
            "variant": variant, "train": {"ms_per_step": train} if train else {},
            "infer": {"ms": infer} if infer else {}}

  (tmp_path / "ahdr_bf16.json").write_text(json.dumps({
      "device": {"device_kind": "NVIDIA H100"}, "settings": {"batch": 8, "patch": 256, "height": 1060, "width": 1900},
      "rows": [models_row("jax", "jit", 10.0, 18.0), models_row("torch", "eager", 40.0, 60.0),
               models_row("torch", "tuned", 30.0, 50.0), models_row("torch", "compile", 25.0, 40.0)]}))
  (tmp_path / "ddpm.json").write_text(json.dumps({
      "args": {"steps": 1000, "batch": 8, "height": 128, "width": 128, "dtype": "bfloat16"},
      "sizes": {"full": {"jax": {"params": 34_340_000, "compiled_total_s": 3.0},
                         "torch": {"variants": {"eager": {"s_per_step": 0.016},
                                                "reduce-overhead": {"s_per_step": 0.006},
                                                "compile": {"error": "no compiler"}}}}}}))
  (tmp_path / "opt_ddpm_batch16.json").write_text(json.dumps({
      "args": {"steps": 1000, "batch": 16}, "xla_flags": "", "sizes": {"full": {"jax": {"compiled_total_s": 4.0}}}}))
  (tmp_path / "opt_frame_convfusion.json").write_text(json.dumps({
      "env": {"XLA_FLAGS": "--xla_gpu_experimental_enable_conv_fusion=true"}, "rows": [models_row("jax", "jit", None, 15.0)]}))
  (tmp_path / "status.jsonl").write_text('{"step": "ahdr_f32", "status": "SKIPPED"}\n')
  summary = gpu_targets.main([f"--out={tmp_path}"])
  train_bf16, train_f32, frame, ddpm = summary["targets"]
  assert (train_bf16["best_peer"], train_bf16["jax_vs_best"], train_bf16["verdict"]) == ("compile", 2.5, "met")
  assert train_f32["verdict"] == "not measured"
  assert (frame["jax"], frame["best_peer"], frame["verdict"]) == (18.0, "compile", "met")
  assert ddpm["peers"] == {"eager": 16.0, "reduce-overhead": 6.0} and ddpm["best_peer"] == "reduce-overhead"
  assert ddpm["verdict"] == "NOT met" and ddpm["jax_vs_best"] == 2.0
  options = {o["option"]: o for o in summary["options"]}
  assert options["batch16"]["speedup"] == pytest.approx((3.0 / 8) / (4.0 / 16))  # per image
  assert options["convfusion"]["speedup"] == pytest.approx(18.0 / 15.0)
  assert json.loads((tmp_path / "targets.json").read_text())["targets"][0]["verdict"] == "met"
  table = gpu_targets.format_summary(summary)
  assert "steps not ok: ahdr_f32 SKIPPED" in table and "NVIDIA H100" in table
