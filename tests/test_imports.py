"""Imports run one way: cli -> driver -> algos -> (loop, worldmodel, planners, data, envs, nn)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_only_the_cli_imports_the_driver():
    for path in sorted((ROOT / "offmarl").rglob("*.py")):
        if path.name == "driver.py" and path.parent.name == "offmarl":
            continue
        mods = _imported_modules(path)
        assert "offmarl.driver" not in mods, f"{path.relative_to(ROOT)} imports offmarl.driver"
        assert not any(m == "rich" or m.startswith("rich.") for m in mods), f"{path.relative_to(ROOT)} imports rich"


def test_an_algorithm_imports_neither_driver_nor_rich():
    code = ("import sys, offmarl.algos.moma_ppo; "
            "print(sorted(m for m in sys.modules if m == 'offmarl.driver' or m.split('.')[0] == 'rich'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# backend modules of offmarl/envs: algorithms reach them only through offmarl.envs (make_env,
# make_vec_env) and the contracts of offmarl/envs/base.py
BACKEND_MODULES = ("offmarl.envs.smac", "offmarl.envs.smax", "offmarl.envs.sc2", "offmarl.envs.smac_maps",
                   "offmarl.envs.mamujoco", "offmarl.envs.coordination")


def test_algorithms_import_no_env_backend():
    for path in sorted((ROOT / "offmarl" / "algos").rglob("*.py")):
        mods = _imported_modules(path)
        bad = sorted(m for m in mods if any(m == b or m.startswith(b + ".") for b in BACKEND_MODULES))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}; use offmarl.envs.make_env / make_vec_env"


def test_the_online_algorithm_loads_no_smac_backend_or_jax():
    code = ("import sys, offmarl.algos.online; "
            "print(sorted(m for m in sys.modules if m in ('offmarl.envs.smac', 'offmarl.envs.smax', "
            "'offmarl.envs.sc2', 'jax', 'jaxmarl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# the online loop and the offline MOMA-PPO(+MAG) share one planner config, one R_m module and one
# trainer module: these guards fail if a piece moves back into the online algorithm or the latent model
def _classes(path: Path) -> list[ast.ClassDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]


def _base_names(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(b) for b in node.bases}


def test_the_algorithms_define_no_planner_config():
    for path in sorted((ROOT / "offmarl" / "algos").rglob("*.py")):
        for cls in _classes(path):
            fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
            planner_like = "planner" in cls.name.lower() or {"l", "h", "discount"} <= fields
            assert not planner_like, (f"{path.relative_to(ROOT)} defines {cls.name}: the MAG planner's settings "
                                      "are offmarl.planners.mag.PlannerConfig (both loops)")
    from offmarl.algos.online import OnlineConfig
    from offmarl.planners.mag import PlannerConfig

    assert type(OnlineConfig().planner) is PlannerConfig


def test_r_m_and_the_model_steps_live_in_the_worldmodel_modules():
    modules = ("nn.Module", "torch.nn.Module", "Module")
    places = [*sorted((ROOT / "offmarl" / "algos").rglob("*.py")), ROOT / "offmarl" / "worldmodel" / "latent.py"]
    for path in places:
        for cls in _classes(path):
            is_module = bool(_base_names(cls) & set(modules))
            assert not (is_module and ("error" in cls.name.lower() or "predictor" in cls.name.lower())), (
                f"{path.relative_to(ROOT)} defines {cls.name}: R_m modules live in offmarl/worldmodel/error_model.py")
    from offmarl.worldmodel import error_model

    assert error_model.LatentErrorModel.__module__ == "offmarl.worldmodel.error_model"
    # the online algorithm calls the steps; their losses, backward passes and optimizer steps are elsewhere
    tree = ast.parse((ROOT / "offmarl" / "algos" / "online.py").read_text())
    calls = {ast.unparse(n.func).split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"backward", "clip_grad_norm_", "error_labels", "zero_grad"}, calls & {
        "backward", "clip_grad_norm_", "error_labels", "zero_grad"}
    assert {"sequence_model_step", "latent_error_model_step"} <= calls
