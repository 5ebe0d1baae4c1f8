"""Source of the function tool the multi-turn tests give verl's tool agent loop (``multi_turn.function_tool_path``
executes a file): ``add``, the one tool both the in-process and the real-vLLM trainer tests call."""

ADD_TOOL = '''
from verl.tools.function_tool import function_tool


@function_tool
def add(a: int, b: int) -> str:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return str(a + b)
'''
