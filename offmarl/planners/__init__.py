"""offmarl.planners: planners over world-model rollouts (mag: MAG random shooting per start state, docs/mag.md)."""
