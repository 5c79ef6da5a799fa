"""LitServe serving a radflow ONNX export with radflow's own decode and preprocessing: the comparison of bench/serve.py.

LitServe's four hooks map onto :class:`radflow.runtime.RadflowModel` one to one, so both servers
run the same code per image and the bench measures only what each server adds around it:

- ``setup``: load the ONNX model in the inference worker (ORT on all cores, as ``radflow serve``);
- ``decode_request``: the multipart field ``file`` -> radflow's decode -> model-size ``uint8`` pixels;
- ``batch`` (LitServe's default, ``np.stack``) -> ``predict``: one ORT run of up to ``max_batch_size``
  images gathered for at most ``batch_timeout`` -> ``unbatch`` (default: one row per request);
- ``encode_response``: the row as radflow's task encodes it (findings at the thresholds), as JSON.

No prediction log, drift or metrics: this is the bare server a first attempt with LitServe gives.
The batch timeout stays above 0 (10 ms by default): at 0, LitServe's worker polls its queue without
blocking and keeps a core busy while idle, which on a small machine slows everything else.

    .venv/bin/python bench/_litserve_app.py --model model.onnx --port 8001 [--max-batch-size 8] [--batch-timeout-ms 10]
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve as ls
import numpy as np

from radflow.runtime import RadflowModel


class RadflowLitAPI(ls.LitAPI):
    """One radflow ONNX model behind LitServe's ``decode_request -> batch -> predict -> unbatch -> encode_response``."""

    def __init__(self, onnx: str, max_batch_size: int, batch_timeout_s: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
        self.onnx = onnx

    def setup(self, device: str) -> None:
        self.model = RadflowModel.load(self.onnx)

    def decode_request(self, request) -> np.ndarray:
        # Unannotated on purpose: LitServe reads this annotation as the endpoint's request type (none: the
        # Starlette request, a multipart body parsed into a form in the HTTP process and handed to the worker).
        upload = request["file"]
        return self.model.prepare(self.model.decode(upload.file.read()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        scores, _ = self.model.run(x, cam=False)
        return scores

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return self.model.to_prediction(output).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="ONNX file made by radflow export.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0)
    args = parser.parse_args()
    api = RadflowLitAPI(args.model, args.max_batch_size, args.batch_timeout_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
