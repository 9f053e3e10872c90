"""The machinery beside omniopd.py: everything a run needs that is not the method itself.

    common      errors, secrets, the HTTP deadline, the folder lock, random state, the step clock, the device
    config      the command line built from a dataclass
    data        dataset rows, and the held-out set a source implies
    models      models (hub, folder, GGUF), the fp32 head, default teachers, LoRA
    generation  prompts, padding, sampling
    grading     answers checked, programs run, pass@1
    teachers    HFTeacher and OpenAITeacher: text in, text out
    similarity  step 5's backends
    fastpaths   scoring tested equal to omniopd.py's definitions, only faster
    tracking    metrics.jsonl, TensorBoard, W&B
    checkpoint  step folders, and what a resumed run may change
    codetask    code problems and the sandboxed checker (standard library only: its child runs it as a script)

Imports point one way: omniopd.py and scale/ import this package; nothing here imports them back
(tests/test_layout.py checks it).
"""
