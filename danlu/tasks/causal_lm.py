"""Task `causal-lm`: a decoder scored and served as it is (a base or pretrained model, no chat fine-tuning).

It shares everything with `sft` (danlu/tasks/sft.py): the same conversations, chat-template rendering,
assistant-token loss, perplexity and ROUGE, so `danlu evaluate smollm2-135m --data alpaca-en` measures
the base model on exactly the tokens a fine-tuned `sft` artifact is measured on.
"""

from danlu.tasks.sft import (EVALUATE_OPTIONS, HEAD, KIND, ONNX_OUTPUTS, OPTIONS, PEFT_TASK_TYPE,  # noqa: F401
                             PRIMARY_METRIC, ROUTE, TRAIN_METRICS, build_model, decision, format_metrics,
                             format_prediction, input_of, load_data, make_objective, predict, read_inputs, score,
                             validate_request)

NAME = "causal-lm"
