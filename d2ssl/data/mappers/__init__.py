from d2ssl.data.mappers.jigsaw import JigsawMapper

__all__ = ["JigsawMapper"]
