"""Writing: plans, storage, new files and write-back, region writes, append, combine,
delete and repack, all committed through one transaction.
"""

__all__: list[str] = []
