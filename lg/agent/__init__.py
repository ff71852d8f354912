"""LLM agent steps (`uses: agent`): the loop runs in lg on the host, every tool call is graded before it runs
inside the step's microVM, risky ones wait at a gate, and every model call is costed against the step's budget.

litellm (the optional extra `lg[agent]`) is imported only by lg.agent.llm, and only when an agent step runs.
"""
