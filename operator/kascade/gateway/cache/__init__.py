"""Response caches: in-process exact and semantic (``memory``), and the exact cache
shared by replicas through Redis (``shared``)."""
