"""offmarl: offline multi-agent reinforcement learning (MOMA-PPO + MAG, baselines, online MAG on SMAC)."""

__version__ = "0.1.0"
