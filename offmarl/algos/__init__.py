"""The algorithms, one per file. Each module provides ``Config`` (a dataclass with a
``loop: LoopConfig`` field), ``Algorithm`` (the protocol in offmarl/loop.py) and optionally
``check_dataset(dataset, cfg)``. The name -> module registry of ``offmarl train --algo`` is
``offmarl.driver.ALGORITHMS``; nothing is imported here, so importing one algorithm stays light.
"""
