"""The service layer: everything an operator can see or do on a node, in one place.

The dashboard, the REST API and the command line all call these functions; none of them
has its own SQL or its own rules. Each state-changing function takes the :class:`Actor`
(who, with which role, from where), checks the role, makes the change through
``segnode.storage`` and records it in the audit log in the same transaction, so an action
and its audit row land together or not at all.

What is not here: anything that loads the model or touches pixels (the node's process
never imports torch; the pipeline runs in worker processes).
"""
