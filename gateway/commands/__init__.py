"""Commands from the control room to declared points: checks, execution through the link's owner, results and
the audit log (README, Commands). Between the composition root and the stages: it uses the links, the
pipeline (for the audit records) and the command channel of the publisher."""
