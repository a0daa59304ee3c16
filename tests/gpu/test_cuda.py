"""CRMs on a CUDA device (make test-gpu): training runs there and scores match the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.data.load import load_prepared

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["bpr", "sasrec"])
def test_crm_trains_on_cuda_and_scores_like_cpu(name):
    registry.load_all()
    cfg = compose_run(["dataset=synthetic", f"crm={name}"])
    data = load_prepared(cfg.dataset)
    crm = registry.CRMS[name].obj(cfg.crm, data.n_users, data.n_items).cuda()
    crm.setup(data.train_view())
    loss = crm.train_epoch(data.train_view(), crm.make_optimizer(), np.random.default_rng(0), progress=False)
    assert np.isfinite(loss) and crm.device.type == "cuda"
    crm.eval()
    users = np.arange(16)
    hist = [data.history(int(u), "test") for u in users]
    on_gpu = crm.score(users, hist, None).cpu()
    on_cpu = crm.cpu().score(users, hist, None)
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)
