"""The assistant: one turn from a customer's message to an answer, a generated reply or a person."""
