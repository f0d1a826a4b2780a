"""OpenC2: the language (commands and responses, checked), and Quell as a consumer of it.

:mod:`quell.openc2.language` holds the models of OpenC2 Language Specification 1.0 with the
Stateless Packet Filtering (SLPF) profile 1.0 and the functions that check a message and name
what is wrong with it; :mod:`quell.openc2.consumer` turns a checked command into a connector
action and the action's outcome into an OpenC2 response. The HTTP edge is
``POST /api/openc2`` (:mod:`quell.api.routes.openc2`); the producer side, sending commands to
another consumer, is the ``openc2`` connector (:mod:`quell.connectors.openc2`).
"""
