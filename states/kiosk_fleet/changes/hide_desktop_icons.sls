{#- Hide the desktop icons of the kiosk user (This PC, Recycle Bin, user
    files, Network): REG_DWORD 1 under HideDesktopIcons\NewStartPanel.
    The minion runs as SYSTEM, so the value goes to the kiosk user's hive
    (user=...), not SYSTEM's HKCU.
      params: {"user": "<kiosk user>", "icons": ["{GUID}", ...]}
      pillar: kiosk_fleet_changes:kiosk_user (default user) #}
{%- set params = salt['pillar.get']('kiosk_change', {}) %}
{%- set user = params.get('user', salt['pillar.get']('kiosk_fleet_changes:kiosk_user', '')) %}
{%- set icons = params.get('icons', [
      '{20D04FE0-3AEA-1069-A2D8-08002B30309D}',
      '{645FF040-5081-101B-9F08-00AA002F954E}',
      '{59031a47-3f72-44a7-89c5-5595fe6b30ee}',
      '{F02C1A0D-BE21-4350-88B0-7367FC96EF3C}']) %}
{%- for guid in icons %}
hide_desktop_icon_{{ guid | replace('{', '') | replace('}', '') | lower }}:
  kiosk_reg.present:
    - name: 'HKCU\Software\Microsoft\Windows\CurrentVersion\Explorer\HideDesktopIcons\NewStartPanel'
    - vname: {{ guid | json }}
    - data: 1
    - vtype: REG_DWORD
{%- if user %}
    - user: {{ user | json }}
{%- endif %}
{%- endfor %}
