"""Documents shared by the classifier tests."""

# Tokenized documents (sentences of tokens) with odd lengths, a one-token document and an empty one.
DOCS = [
    [["Stocks", "fell", "."], ["Oil", "rose", "sharply", "on", "Monday", "."]],
    [["One"]],
    [],  # empty document: one zero position
    [["A", "title"], ["The", "body", "has", "a", "sentence", "of", "nine", "tokens", "."], ["And", "another"]],
]
