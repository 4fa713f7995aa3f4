"""The asyncio node around the Raft core: the Ready loop, peer transport, members, codec."""
