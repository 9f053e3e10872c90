# %% [markdown]
# # 4. Teacher rollouts: only text crosses the boundary
#
# ## Background
# Standard OPD needs $\pi_T(v \mid s_t)$ for every vocabulary token v: the teacher's
# logits, on the student's tokenizer. API models expose none of that. OmniOPD asks the
# teacher for what any model can give: **text**. At each fork it sends the decoded
# prefix $s_t$ and gets M continuations of about L tokens back. The teacher can be
# any function text → text: a local Hugging Face model, or any OpenAI-compatible
# endpoint (OpenAI; Anthropic's and Gemini's compatibility endpoints; vLLM; SGLang).
#
# Two ways to ask. A **completion** endpoint gets the raw prefix and simply continues
# it. A **chat** model would answer the question from scratch, so it is asked to
# continue the partial solution exactly where it stops (`CHAT_CONTINUE_PROMPT`).
#
# ## Equation
# $$r^1, \dots, r^M \sim T(\cdot \mid \operatorname{decode}(s_t)), \qquad r^m \text{ cut to its first } L \text{ student tokens}$$
#
# ## Code
# Every teacher has one method, `continuations(prefixes, n, max_tokens, draw, rows)`: a list per
# prefix of n texts, or `None` when every request for that prefix failed (the fork is
# then skipped and counted in `forks/skipped`). `draw` ("seed 0 step 12") names the call
# for teachers that cache answers (scale/'s pool); `rows` are the prefixes' dataset rows,
# whose question and reference answer a `--teacher-prompt` may show the teacher
# (`teacher_message` fills the template; by default chat teachers get
# `CHAT_CONTINUE_PROMPT` and completion teachers the raw prefix). The teacher may write 2·L of its own
# tokens; `teacher_rollouts` then cuts each text to L tokens of the student's tokenizer, so
# a draft and a teacher rollout have the same length in the same units. An empty reply
# that the teacher ended on purpose is the text `""` (a vote for stopping here); one cut at
# the token limit is a failure (`teachers.teacher_answer`).
#
# `teacher_rollouts` returns the call under way (`InFlight`): an API teacher's requests go out
# on a thread at once, so the student drafts its chunks (step 3) while they are in flight, and
# `.wait(run.clock)` collects them, logging `time/teacher` (the teacher's own time) and
# `time/teacher_wait` (what the student still waited). A local teacher shares the device and
# torch's random state, so it runs only when waited for, exactly where it ran before.

# %%
from helpers import show
import omniopd
from omniopd_lib.teachers import HFTeacher
from omniopd_lib import teachers

print(teachers.CHAT_CONTINUE_PROMPT)
show(omniopd.teacher_rollouts)
show(teachers.InFlight)
show(HFTeacher.continuations)
show(teachers.OpenAITeacher.one_request)

# %% [markdown]
# ## Worked example: a local teacher, then the same teacher over HTTP
# The toy teacher continues a student's prefix that contains a mistake (`6-7=`). It
# continues consistently from what is written; it does not restart the solution.

# %%
import os
import torch
from omniopd_tools.serve import start_in_thread

prefix = "Question: Gus has 4 toys. He finds 3 more, then loses 7. How many toys now?\nAnswer: 4+3=7. 7-7="
local = HFTeacher("toy", torch.device("cpu"), mode="completion", temperature=0.0)
print("local, greedy:      ", local.continuations([prefix], n=1, max_tokens=16))

server = start_in_thread("toy")                     # a real OpenAI-compatible server on 127.0.0.1
url = f"http://127.0.0.1:{server.server_address[1]}/v1"
os.environ["TUTORIAL_KEY"] = "not-a-secret"
for mode in ("completion", "chat"):
    remote = teachers.OpenAITeacher("toy", url, "TUTORIAL_KEY", mode=mode, temperature=0.0)
    answer = remote.continuations([prefix], n=2, max_tokens=16)
    print(f"HTTP, {mode + ':':<12}", answer)
    assert answer == [local.continuations([prefix], n=1, max_tokens=16)[0] * 2]
torch.manual_seed(0)
sampled = teachers.OpenAITeacher("toy", url, "TUTORIAL_KEY", mode="completion", temperature=1.0)
print("HTTP, sampled M=4:  ", sampled.continuations([prefix], n=4, max_tokens=16))
print("requests served:", server.requests_served)
server.shutdown()

# %% [markdown]
# The black-box answers equal the local model's: nothing but text was needed.
#
# ## What to log
# `teacher/calls` (continuations requested), `teacher/failures` (requests that failed
# after retries, or came back empty), `teacher/tokens` (generated tokens: what an
# API bills), `forks/skipped`.
#
# ## References
# OpenAI API reference, *Completions* and *Chat Completions*; Anthropic and Google
# OpenAI-compatibility documentation; vLLM and SGLang OpenAI-compatible servers.
#
# ## Exercises
# 1. A chat teacher sometimes restarts the solution instead of continuing. What does
#    that do to the similarity of page 5? How would you detect it in the logs?
# 2. The toy teacher at temperature 1.0 gives the same continuation M times. What is
#    then the information in M = 4 samples versus M = 1?
