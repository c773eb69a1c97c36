package tree

import "reflect"

func reflectMapType() reflect.Type { return reflect.TypeOf(map[string]any(nil)) }
