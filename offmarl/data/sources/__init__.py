"""offmarl.data.sources"""
