"""Settings from RADFLOW_* variables, and a serving process that never imports torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from radflow.inference import ServeSettings


def test_environment_overrides_defaults_and_store_goes_in_the_workspace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = ServeSettings()
    assert (defaults.max_batch_size, defaults.max_queue_delay_ms, defaults.max_body_bytes) == (8, 0.0, 50 * 2**20)
    assert defaults.admin_token is None and defaults.store_inputs
    monkeypatch.setenv("RADFLOW_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("RADFLOW_ADMIN_TOKEN", "t0k")
    monkeypatch.setenv("RADFLOW_ALLOWED_CONTENT_TYPES", '["image/png"]')
    settings = ServeSettings(workspace=tmp_path)
    assert settings.max_batch_size == 16 and settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "t0k" and "t0k" not in repr(settings)
    assert settings.allowed_formats == {"png"}
    assert settings.resolved_store_url() == f"sqlite:///{tmp_path.resolve() / 'serving.db'}"
    assert settings.resolved_inputs_dir() == tmp_path.resolve() / "inputs"
    assert settings.resolved_model() == "models:/chest-xray@champion"
    assert settings.resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    with pytest.raises(ValidationError, match="image/gif"):
        ServeSettings(allowed_content_types=["image/gif"])
    with pytest.raises(ValidationError):
        ServeSettings(max_batch_size=0)


def test_serving_never_imports_torch(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, io, sys
        import httpx
        import numpy as np
        from PIL import Image
        from radflow.inference import ServeSettings
        from radflow.serve import create_app

        async def main():
            app = create_app(ServeSettings(model={str(onnx_pair[0])!r}, challenger={str(onnx_pair[1])!r},
                                           store_url="sqlite:///{tmp_path / "s.db"}", shadow=True))
            buf = io.BytesIO()
            Image.fromarray(np.full((40, 30), 99, np.uint8)).save(buf, format="PNG")
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    answer = await client.post("/v1/predict", content=buf.getvalue())
                    assert answer.status_code == 200, answer.text
                    heat = await client.get(f"/v1/predictions/{{answer.json()['id']}}/heatmap.png?label=Pneumothorax")
                    assert heat.status_code == 200, heat.text

        asyncio.run(main())
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("LEAKED" if leaked else "CLEAN", leaked[:5])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CLEAN"), result.stdout


def _workspace(tmp_path: Path, text: str) -> Path:
    (tmp_path / "params.yaml").write_text(textwrap.dedent(text))
    return tmp_path


def test_workspace_params_reach_the_settings_under_the_environment_and_the_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RADFLOW_MAX_BATCH_SIZE", raising=False)
    monkeypatch.delenv("RADFLOW_MODEL_NAME", raising=False)
    root = _workspace(
        tmp_path,
        """
        registry:
          name: hand-bone-age
        serve:
          max_batch_size: 4
          port: 8123
        """,
    )
    from_file = ServeSettings(workspace=root)
    assert (from_file.max_batch_size, from_file.port, from_file.model_name) == (4, 8123, "hand-bone-age")
    assert from_file.resolved_model() == "models:/hand-bone-age@champion"
    assert ServeSettings().max_batch_size == 8  # no workspace named: no params.yaml is read

    monkeypatch.setenv("RADFLOW_MAX_BATCH_SIZE", "16")
    assert ServeSettings(workspace=root).max_batch_size == 16  # the environment wins over params.yaml
    assert ServeSettings(workspace=root).port == 8123  # ... only for what it sets
    assert ServeSettings(workspace=root, max_batch_size=2).max_batch_size == 2  # a flag wins over both

    monkeypatch.setenv("RADFLOW_WORKSPACE", str(root))  # the workspace may come from the environment too
    assert ServeSettings().model_name == "hand-bone-age"


def test_a_misspelt_serve_key_in_params_is_an_error_naming_it(tmp_path: Path) -> None:
    from radflow.errors import ConfigError

    root = _workspace(tmp_path, "serve:\n  max_batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"serve\.max_batch_sise.*Did you mean 'max_batch_size'"):
        ServeSettings(workspace=root)
