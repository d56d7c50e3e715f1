"""Feed writes: the log (`log`), publishing (`publish`), subscriptions, fan-out and applying entries."""
