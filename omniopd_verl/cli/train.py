"""`omniopd-verl train`: launch OmniOPD on verl (default) or on the local one-process engine.

    omniopd-verl train [--config-name fsdp|megatron|NAME] [key=value ...]        # verl, shipped configs
    omniopd-verl train --config recipes/<name>/<file>.yaml [key=value ...]       # verl, a recipe YAML
    omniopd-verl train --dry-run ...                                             # print + validate only
    omniopd-verl train --engine local --config FILE.yaml [key=value ...]         # one process, CPU/1 GPU

verl: the config is composed with Hydra exactly as `verl.trainer.main_ppo` will compose it (same
config dir, name and overrides), validated (the `omniopd:` node through OmniOPDConfig, OmniOPD's verl
wiring, then verl's own `validate_config`), and handed to `python -m verl.trainer.main_ppo`.
`--dry-run` stops after printing the resolved config; it never starts Ray.

CPU mode (`--cpu`, and always on a machine without a GPU): verl's real trainer with the `hf`
(transformers) rollout and FSDP2 on gloo, by adding the overlay `+omniopd_platform=cpu` and
VERL_PLATFORM=cpu (omniopd_verl/config/omniopd_platform/cpu.yaml, docs/verl.md "CPU mode"). It is for
checking a recipe, a plugin or OmniOPD itself end to end with a tiny model, not for training.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from omniopd_verl.verl_integration.names import CPU_TRAINER_MODE

HELP = "Train with OmniOPD: on verl (FSDP/Megatron, GPUs) or the local engine (--engine local)."
CONFIG_NAMES = {"fsdp": "omniopd_fsdp", "megatron": "omniopd_megatron"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("verl", "local"), default="verl", help="verl (default) or local")
    parser.add_argument(
        "--config",
        default=None,
        help="a YAML file: a verl recipe composing pkg://omniopd_verl.config (verl), or a local-engine config",
    )
    parser.add_argument(
        "--config-name",
        default=None,
        help="shipped verl config: fsdp (omniopd_fsdp, default), megatron (omniopd_megatron), or a file name in it",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, validate it, stop")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="verl's trainer on CPU (hf rollout, FSDP2 on gloo): automatic on a machine without a GPU",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (verl) or key=value overrides (local)")


def run(args: argparse.Namespace) -> int:
    if args.engine == "local":
        return _run_local(args)
    return _run_verl(args)


def _run_local(args: argparse.Namespace) -> int:
    if args.config_name:
        print("--config-name selects a verl config; the local engine takes --config FILE.yaml", file=sys.stderr)
        return 2
    try:
        from omniopd_verl.local import train as local_train
    except ImportError as exc:
        print(f"the local engine is not available: {exc}", file=sys.stderr)
        return 2
    from omniopd_verl.errors import ConfigError

    if not args.config:
        print(
            "--engine local needs --config FILE.yaml (e.g. recipes/quickstart_cpu/quickstart_cpu.yaml)", file=sys.stderr
        )
        return 2
    try:
        check_yaml(args.config)
        run_cfg = local_train.load_run_config(args.config, args.overrides)
        check_local_paths(run_cfg)
        check_local_context(run_cfg)
        # the plugins the run will build, built now (the local engine shares its reference copy with a teacher)
        from omniopd_verl import registry

        registry.check_plugins(run_cfg.omniopd, resources=("reference_model",))
        if args.dry_run:
            import json

            import yaml

            from omniopd_verl.teachers.secrets import Redactor, mask_credentials

            # through JSON: tuples (adam_betas) become lists, so safe_dump writes plain YAML; a key put in the
            # YAML (e.g. teacher.options.extra_kwargs.api_key) is masked, and so is any key the process holds
            data = mask_credentials(json.loads(json.dumps(run_cfg.to_dict())))
            print(Redactor()(yaml.safe_dump(data, sort_keys=False)), end="")
            print(f"# config {args.config} is valid (omniopd + local engine checks)", file=sys.stderr)
            return 0
        return int(local_train.run(args.config, args.overrides) or 0)
    except ConfigError as exc:  # a bad key or value: the message names it, a traceback would only bury it
        print(f"omniopd-verl train: invalid config: {exc}", file=sys.stderr)
        return 2


def check_local_paths(run_cfg) -> None:
    """The data files exist and parse, and the output folder can be created: checked before any model loads."""
    from omniopd_verl.errors import ConfigError
    from omniopd_verl.local.data import load_splits, resolve_data_path

    cfg = run_cfg.local
    resolve_data_path(cfg.data.path)  # raises ConfigError naming local.data.path
    if cfg.data.heldout_path is not None:
        try:
            resolve_data_path(cfg.data.heldout_path)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("local.data.path=", "local.data.heldout_path=", 1)) from None
    load_splits(cfg.data)  # every line parses and has the prompt/reference keys (cheap: no model involved)
    probe = os.path.abspath(cfg.output_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise ConfigError(f"local.output_dir={cfg.output_dir!r} is invalid: {probe} is not a writable folder")


def check_local_context(run_cfg) -> None:
    """The longest sequence the local engine builds (a prompt left-truncated to local.max_prompt_tokens plus
    local.max_new_tokens) must fit the student's context: positions past it would be trained on silently."""
    from omniopd_verl.errors import ConfigError
    from omniopd_verl.runtime.models import load_model_config, load_tokenizer
    from omniopd_verl.runtime.scoring import context_limit

    cfg = run_cfg.local
    limit = context_limit(load_model_config(cfg.model), load_tokenizer(cfg.model))
    total = cfg.max_prompt_tokens + cfg.max_new_tokens
    if limit is not None and total > limit:
        raise ConfigError(
            f"local.max_prompt_tokens={cfg.max_prompt_tokens} + local.max_new_tokens={cfg.max_new_tokens} = {total} "
            f"tokens is beyond the context of the student {cfg.model!r} ({limit} tokens): lower one of them"
        )


def check_yaml(path: str) -> None:
    """Parse the YAML file once up front, so a syntax error names the file and the line (ConfigError)."""
    from omniopd_verl.config.overrides import read_yaml_mapping

    read_yaml_mapping(path)


def _unknown_omniopd_override(exc: Exception) -> str | None:
    """Hydra's "Could not override 'omniopd.alpah' ... use +omniopd.alpah" for an omniopd.* key that
    OmniOPDConfig does not have, as "unknown key omniopd.alpah; did you mean alpha?" (a '+' would add a
    key nothing reads)."""
    import dataclasses
    import re

    from omniopd_verl.config import OmniOPDConfig, TeacherConfig, unknown_key

    found = re.search(r"Could not override '(omniopd\.[\w.]+)'", str(exc))
    if not found:
        return None
    *parents, key = found.group(1).split(".")[1:]
    cls = OmniOPDConfig
    for part in parents:  # only dataclass nodes; free-form option maps keep Hydra's message
        if cls is OmniOPDConfig and part == "teacher":
            cls = TeacherConfig
        else:
            return None
    names = [f.name for f in dataclasses.fields(cls)]
    return None if key in names else str(unknown_key(found.group(1), names))


def config_location(config: str | None, config_name: str | None) -> tuple[Path, str]:
    """(absolute config dir, config name) for Hydra and main_ppo's --config-path/--config-name."""
    from omniopd_verl.verl_integration.plugin import CONFIG_DIR

    if config and config_name:
        raise ValueError("give either --config FILE.yaml or --config-name NAME, not both")
    if config:
        path = Path(config).expanduser().resolve()
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            raise ValueError(f"--config={config!r}: no such YAML file")
        return path.parent, path.stem
    name = CONFIG_NAMES.get(config_name or "fsdp", config_name)
    if not (CONFIG_DIR / f"{name}.yaml").is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("omniopd_*.yaml") if p.stem != "omniopd_common")
        raise ValueError(f"--config-name={config_name!r} is not a shipped config; allowed: fsdp, megatron, {shipped}")
    return CONFIG_DIR, name


def compose_verl_config(config_dir: Path, config_name: str, overrides: list[str]):
    """Compose like main_ppo does (Hydra, same dir/name/overrides); registers our plugin first."""
    from hydra import compose, initialize_config_dir

    import omniopd_verl.verl_integration.plugin  # noqa: F401 - the resolver and registrations

    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def validate(cfg) -> None:
    """OmniOPD's checks, then verl's own validate_config (what main_ppo runs first)."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from omniopd_verl import registry
    from omniopd_verl.verl_integration.checks import check_verl_config, omniopd_config_from_verl
    from omniopd_verl.verl_integration.self_check import self_check

    self_check()
    OmegaConf.resolve(cfg)  # every interpolation, including ${omniopd_verl.resource:...}
    check_verl_config(cfg)
    # the plugins the reward workers will build, built here first: a bad option fails now, not after a model load
    registry.check_plugins(omniopd_config_from_verl(cfg))
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    if _select(cfg, "distillation.enabled"):  # kl_anchor=topk_ref: verl's own teacher/pool checks, now
        from verl.utils.config import omega_conf_to_dataclass

        omega_conf_to_dataclass(cfg.distillation)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


CPU_OVERLAY = "+omniopd_platform=cpu"
TOPK_REF_OVERLAY = "+omniopd_kl_anchor=topk_ref"  # the verl keys of omniopd.kl_anchor=topk_ref
# CPU mode with topk_ref: the reference "teacher" pool is one more logical GPU and one more bundle CPU
TOPK_REF_CPU_OVERRIDES = ["ray_kwargs.ray_init.num_gpus=2", "ray_kwargs.ray_init.num_cpus=4"]


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None)


CPU_MODE_MESSAGE = (
    "omniopd-verl train: {why}: running verl's real trainer in CPU mode (VERL_PLATFORM=cpu, "
    f"{CPU_OVERLAY}: the hf transformers rollout, FSDP2 on gloo, 1 worker of each kind). CPU mode is for "
    "checking a recipe, a plugin or OmniOPD itself end to end with a tiny model (see "
    "recipes/verl_cpu_smoke); it does not train a real model at a useful speed. For that use GPUs, or "
    "`--engine local` for a single-process run on CPU or one GPU."
)


def _print_forecast(cfg) -> None:
    """What the teacher will cost, before anything is paid (teachers/forecast.py), on stderr."""
    from omniopd_verl.teachers.forecast import verl_forecast
    from omniopd_verl.verl_integration.checks import omniopd_config_from_verl

    for line in verl_forecast(cfg, omniopd_config_from_verl(cfg)).lines():
        print(f"# {line}", file=sys.stderr)


def _run_verl(args: argparse.Namespace) -> int:
    from omniopd_verl.errors import OmniOPDError

    overrides = list(args.overrides)
    env = dict(os.environ)
    cpu = args.cpu or (not args.dry_run and not _has_gpu())
    if cpu:
        why = "--cpu" if args.cpu else "this machine has no GPU"
        print(CPU_MODE_MESSAGE.format(why=why), file=sys.stderr)
        from omniopd_verl.verl_integration.cpu.smoke import cpu_env

        env = cpu_env(env)
    try:
        config_dir, config_name = config_location(args.config, args.config_name)
        if args.config:
            check_yaml(args.config)  # a syntax error: one line with the file and line, not PyYAML's four
        cfg = compose_verl_config(config_dir, config_name, overrides)
        if _select(cfg, "omniopd.kl_anchor") == "topk_ref" and not _select(cfg, "distillation.enabled"):
            overrides.append(TOPK_REF_OVERLAY)  # not composed with it yet
            cfg = compose_verl_config(config_dir, config_name, overrides)
        if cpu and _select(cfg, "trainer.v1.trainer_mode") != CPU_TRAINER_MODE:  # not composed with it yet
            overrides.append(CPU_OVERLAY)
            if _select(cfg, "omniopd.kl_anchor") == "topk_ref":
                overrides.extend(TOPK_REF_CPU_OVERRIDES)
            cfg = compose_verl_config(config_dir, config_name, overrides)
        with contextlib.redirect_stdout(sys.stderr):  # verl's validate_config prints; stdout is the YAML
            validate(cfg)
    except (OmniOPDError, ValueError, AssertionError) as exc:
        print(f"omniopd-verl train: invalid config: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Hydra composition / interpolation errors name the key themselves
        unknown = _unknown_omniopd_override(exc)
        if unknown:
            print(f"omniopd-verl train: invalid config: {unknown}", file=sys.stderr)
            return 2
        said = " ".join(str(exc).split())  # Hydra's advice spans lines: one line, as for every other error
        print(f"omniopd-verl train: cannot compose the config: {type(exc).__name__}: {said}", file=sys.stderr)
        return 2
    if args.dry_run:
        from omegaconf import OmegaConf

        from omniopd_verl.teachers.secrets import Redactor, mask_credentials

        data = mask_credentials(OmegaConf.to_container(cfg, resolve=True))  # keys placed in the YAML: masked
        print(Redactor()(OmegaConf.to_yaml(OmegaConf.create(data))))
        print(f"# config {config_dir / config_name}.yaml is valid (omniopd + verl checks)", file=sys.stderr)
        _print_forecast(cfg)
        return 0
    cmd = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-path={config_dir}",
        f"--config-name={config_name}",
        *overrides,
    ]
    print("+ " + ("VERL_PLATFORM=cpu " if cpu else "") + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env=env)
