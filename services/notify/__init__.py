"""`surge notify`: actionable signals, risk-state changes and finished jobs posted to a chat webhook."""
