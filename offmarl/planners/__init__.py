"""offmarl.planners"""
