"""Queries of both kinds, knowledge and generation, alternating: what the tests fit and read tiny gates on."""

QUERIES = [
    "What is the capital of France?",
    "Write a short poem about the sea and the wind.",
    "Name the largest planet.",
    "Tell me a story about a brave knight who loses his sword.",
    "Who wrote Hamlet?",
    "Compose a limerick about a cat.",
]
