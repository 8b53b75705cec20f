"""Data: concept folders checked up front (`concepts`), caption text and the trigger-free caption (`captions`), and the
training dataset (`dataset`). The first layer of the flow data -> models -> training -> sampling -> evaluation -> demo.
"""
