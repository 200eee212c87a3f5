"""The transposed-product Linear used for batched decoding on CPU computes what nn.Linear computes."""

import torch

from danlu.serve.cpu_linear import MAX_ROWS_HEAD, speed_up_linears


def test_same_product_for_every_row_count_and_shape():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 80), torch.nn.GELU(), torch.nn.Linear(80, 24, bias=False))
    inputs = [torch.randn(1, 48), torch.randn(16, 48), torch.randn(4, 5, 48), torch.randn(20, 48), torch.randn(MAX_ROWS_HEAD + 7, 48)]
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
        assert speed_up_linears(model) == 2
        got = [model(x) for x in inputs]
    for x, e, g in zip(inputs, expected, got):
        assert g.shape == e.shape == (*x.shape[:-1], 24)
        assert g.is_contiguous()
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_leaves_other_dtypes_and_training_alone():
    half = torch.nn.Linear(8, 8).to(torch.bfloat16)
    assert speed_up_linears(torch.nn.Sequential(half)) == 0
    layer = torch.nn.Linear(8, 4)
    speed_up_linears(layer)
    x = torch.randn(6, 8, requires_grad=True)
    layer(x).sum().backward()  # the patched forward falls back to F.linear when gradients are needed
    assert x.grad is not None and x.grad.shape == (6, 8)
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(6, 8))
