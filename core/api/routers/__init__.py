"""One APIRouter per resource; core.api.app includes them all."""
