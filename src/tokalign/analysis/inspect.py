"""`tokalign inspect`: where each method put the credit, token by token, in a finished run.

The run's method builds the view (`Method.view`, recomputed from the run's models with the
public `tokalign.losses` functions); this module renders it as a self-contained HTML page
(`<run_dir>/inspect.html`: a colour key, each response under its prompt, each token's values printed
under it and kept in its tooltip and `data-*` attributes)
and logs it to the run's W&B run as `wandb.Html` when it has one (online only when this user's
own W&B settings say so, whatever the run's config says). The run directory is read as data,
as `tokalign eval` reads it (tokalign.analysis.evaluate).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from tokalign import rewards
from tokalign.app.registry import get_method
from tokalign.artifacts.files import atomic_text, refuse_links_out
from tokalign.artifacts.rundir import finished_model, load_run_config
from tokalign.bases.views import ViewContext, render_html
from tokalign.errors import ConfigError


def _log_to_wandb(cfg: DictConfig, run_dir: Path, page: str) -> None:
    from tokalign.artifacts.tracking import resume_wandb

    run = resume_wandb(cfg, run_dir)
    if run is None:
        return
    import wandb

    run.log({"inspect/tokens": wandb.Html(page)})
    run.finish()


def inspect_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    num_examples: int = 4,
    max_new_tokens: int | None = None,
    progress: float = 1.0,
    trust_remote_code: bool = False,
    trust_run_code: bool = False,
) -> Path:
    """Build the method's view of a finished run, write the HTML page, log it to W&B when the run has one."""
    from tokalign.modeling.models import load_tokenizer

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, trust_remote_code=trust_remote_code, trust_run_code=trust_run_code)
    refuse_links_out(run_dir, "run dir")
    finished_model(run_dir)
    method = get_method(cfg.method.get("algorithm") or cfg.method.name)
    if method.view is None:
        raise ConfigError(f"method={cfg.method.name} has no token view")
    if max_new_tokens is not None:
        for key in ("max_completion_length", "max_new_tokens"):
            if key in cfg.method:
                cfg.method[key] = int(max_new_tokens)
    tokenizer = load_tokenizer(str(run_dir / "model"), cfg.model.trust_remote_code)
    with rewards.run_code(cfg, str(run_dir / "resolved.yaml"), trusted=trust_run_code):
        page = render_html(method.view(ViewContext(cfg, run_dir, tokenizer, num_examples, progress)))
    path = atomic_text(Path(out) if out else run_dir / "inspect.html", page)
    _log_to_wandb(cfg, run_dir, page)
    return path
